//! Queued ingestion (`shared/kusto-queued.md`): the chunk goes up as a blob, then a message naming it goes to
//! the DM's ingestion queue, and the service ingests it later, in batches.
//!
//! - [`resources`]: `.get ingestion resources` and `.get kusto identity token`, parsed by column name, cached
//!   and refreshed hourly ahead of need; a failed refresh keeps the old ones and backs off; a 403 from storage
//!   forces a refresh.
//! - [`rank`]: which storage account, container and queue to try, at most three per operation.
//! - [`storage`]: blob names, URLs and the classification of storage answers.
//! - [`message`]: the queue message, byte for byte.
//!
//! The blob name and the message `Id` come from the chunk id, so a resend (after a failure or a reboot)
//! overwrites the same blob and the DM de-duplicates it. SAS URLs and the identity token live only in this
//! sink's memory ([`crate::secret::SecretString`]): never in a log line, an error message or the spool; a chunk
//! replayed after a reboot takes fresh ones.
//!
//! Status tracking ([`status`]): with `queued.report` = `failures` or `all` (and the queue method), a posted
//! chunk is remembered (bounded) and the DM's notification queues are read on `poll`; a failure notification
//! about one of ours is a final `Rejected`, a success notification a final `Ingested`, and only those messages
//! are deleted. With the table method (`queued.report_method` = `table`) the sink inserts the chunk's `Pending` row
//! in the DM's status table before it posts the message, names the row in the message, and reads the rows of the
//! chunks it tracks back on `poll` (at most [`status::ROWS_PER_POLL`] a round) until the DM has written an outcome.

pub mod message;
pub mod rank;
pub mod resources;
pub mod status;
pub mod storage;

use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use ring::rand::SystemRandom;
use zeroize::Zeroize;

use crate::auth::TokenCache;
use crate::config::{Config, QueuedReport, ReportMethod};
use crate::error::{Error, ErrorKind};
use crate::network::network_failure;
use crate::response::{classify as classify_kusto, Failure, FailureClass, Reply};
use crate::secret::SecretString;
use crate::spool::DestKey;
use crate::transport::{Method, Request, Transport};
use crate::wire::{self, DmUrl, Format};

use super::{Attempt, Blocks, ChunkRef, SendIo, Sent, Sink, SinkId, SinkTarget, StatusReport};
use resources::{Plan, Resources, Schedule};

/// `x-ms-version` of blob and queue requests: the doc allows 2019-12-12 or later, Azurite 3.37 up to 2026-06-06.
pub const STORAGE_VERSION: &str = "2024-11-04";
/// Bytes of a management answer read at most (the resources' data set with a dozen SAS URLs is about 4 KiB).
pub const MGMT_BODY_BYTES: usize = 32 * 1024;
/// Heap the queued sink holds besides what streaming does, at most: the management (and notification) answer
/// buffer, the message JSON (48 KiB) and its base64 in XML (64 KiB), a decoded notification (32 KiB), the
/// resources with their SAS URLs and the identity token (64 KiB: at most 32 rows per type), the table of chunks
/// awaiting a report (64 KiB: 256 entries), and the client's table of chunks held in the spool until their report
/// with the words of one status round (16 KiB). Checked by `tests/memory.rs` (queued and managed).
pub const QUEUED_BYTES: u64 = (MGMT_BODY_BYTES + (48 + 64 + 32 + 64 + 64 + 16) * 1024) as u64;

/// What one attempt does once the resources are in hand: the uploads and the message.
type StorageOps<'a> = dyn FnMut(&QueuedSink, &mut State, &mut SendIo<'_>, &mut u32) -> Result<(), storage::Verdict>
    + 'a;

/// A storage operation, for its method and messages.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Op {
    /// Put Blob, Put Block, Put Block List.
    Upload,
    /// Put Message.
    Enqueue,
    /// Insert Entity (the chunk's status row).
    StatusRow,
}

impl Op {
    fn name(self) -> &'static str {
        match self {
            Op::Upload => "upload",
            Op::Enqueue => "enqueue",
            Op::StatusRow => "status row",
        }
    }
}

/// A refresh forced by a storage 403 is skipped when the resources are younger than this: they are as fresh as
/// the DM makes them.
const FORCE_DEBOUNCE: Duration = Duration::from_secs(2);

struct State {
    schedule: Schedule,
    resources: Option<Resources>,
    identity: Option<SecretString>,
    stats: rank::AccountStats,
    mgmt_body: Vec<u8>,
    json: String,
    xml: String,
    tracker: status::Tracker,
    last_status_poll: Option<Instant>,
    notification: Vec<u8>,
    /// Where the next round of status-row reads starts.
    row_cursor: usize,
}

/// The queued-ingestion protocol: DM management commands, blob upload, queue message.
pub struct QueuedSink {
    transport: Transport,
    auth: Option<Arc<TokenCache>>,
    dm: DmUrl,
    mgmt_url: String,
    app: String,
    user: String,
    client_version: String,
    report: QueuedReport,
    method: ReportMethod,
    rng: SystemRandom,
    epoch: Instant,
    state: Mutex<State>,
    /// `state.tracker.len()`, readable without the lock (which a send holds through its requests).
    awaiting: AtomicUsize,
}

fn failed(f: Failure, requests: u32) -> Sent {
    Sent {
        attempt: Attempt::Failed(f),
        requests,
    }
}

impl QueuedSink {
    /// A sink for the DM of `cfg`; `transport` reaches the DM and the storage accounts, `auth` is the token the
    /// DM takes (the same scope as streaming).
    pub fn new(
        cfg: &Config,
        dm: DmUrl,
        transport: Transport,
        auth: Option<Arc<TokenCache>>,
        now: Instant,
    ) -> QueuedSink {
        QueuedSink {
            transport,
            auth,
            mgmt_url: dm.mgmt_url(),
            dm,
            app: cfg.app.clone(),
            user: cfg.user.clone(),
            client_version: wire::client_version(&cfg.app, cfg.app_version.as_deref()),
            report: cfg.queued_report,
            method: cfg.queued_report_method,
            rng: SystemRandom::new(),
            epoch: now,
            state: Mutex::new(State {
                schedule: Schedule {
                    fetched_at: None,
                    not_before: None,
                    failures: 0,
                    forced: false,
                },
                resources: None,
                identity: None,
                stats: rank::AccountStats::default(),
                mgmt_body: vec![0; MGMT_BODY_BYTES],
                json: String::with_capacity(4096),
                xml: String::with_capacity(8192),
                tracker: status::Tracker::new(),
                last_status_poll: None,
                notification: Vec::with_capacity(4096),
                row_cursor: 0,
            }),
            awaiting: AtomicUsize::new(0),
        }
    }

    /// The `ReportLevel` the messages carry.
    pub fn report_level(&self) -> u8 {
        self.report.level()
    }

    /// Whether posted chunks await a report (the DM writes some, to the queues or the status table).
    fn tracks(&self) -> bool {
        self.report != QueuedReport::None
    }

    /// The final word on a tracked chunk, from a notification or a status row: `None` ingested, else the DM's
    /// error code, failure status and details, classified.
    fn dm_failure(entry: &status::Inflight, note: &status::Notification) -> Option<Failure> {
        // A resend of a blob the DM has already received (after a crash or a lost answer): its data is in.
        if note.error_code.starts_with("BlobAlreadyReceived") {
            return None;
        }
        let mut f = Failure::network("");
        f.class = if note.failure_status.eq_ignore_ascii_case("Permanent") {
            FailureClass::Rejected
        } else {
            FailureClass::Transient
        };
        let _ = f
            .code
            .push_str(&note.error_code[..note.error_code.len().min(f.code.capacity())]);
        let msg = format!(
            "{}.{}: the DM could not ingest chunk {}: {} ({}): {}",
            entry.dest.database,
            entry.dest.table,
            entry.id,
            note.error_code,
            note.failure_status,
            storage::scrub(&note.details)
        );
        f.message = crate::response::truncated(&msg);
        Some(f)
    }

    /// Reports the DM's word on message `source` for every chunk it carried (several when they went up as the
    /// blocks of one blob), and stops tracking them.
    fn report_source(
        tracker: &mut status::Tracker,
        source: &str,
        ingested: bool,
        note: &status::Notification,
        report: &mut dyn FnMut(&StatusReport<'_>),
    ) {
        for entry in tracker.take_source(source) {
            let failure = (!ingested)
                .then(|| Self::dm_failure(&entry, note))
                .flatten();
            report(&StatusReport {
                chunk_id: &entry.id,
                dest: &entry.dest,
                records: entry.records,
                raw_len: entry.raw_len,
                failure,
            });
        }
    }

    /// Reads the status rows of up to [`status::ROWS_PER_POLL`] tracked chunks, in turn, and reports each one the
    /// DM has finished with. A row that cannot be read is tried again at the next round.
    fn read_rows(
        &self,
        st: &mut State,
        io: &mut SendIo<'_>,
        report: &mut dyn FnMut(&StatusReport<'_>),
    ) -> u32 {
        let mut requests = 0;
        let headers = [
            ("Accept", "application/json;odata=nometadata"),
            ("DataServiceVersion", "3.0"),
            ("x-ms-version", STORAGE_VERSION),
        ];
        let round = {
            let State {
                tracker,
                row_cursor,
                ..
            } = &mut *st;
            tracker.round(row_cursor, status::ROWS_PER_POLL)
        };
        for (id, table) in round {
            if io.clock.now() >= io.deadline {
                break;
            }
            let url = match st.resources.as_ref().and_then(|r| {
                r.status_tables
                    .get(table as usize)
                    .or(r.status_tables.first())
            }) {
                Some(t) => storage::entity_url(&t.url, &id),
                None => break,
            };
            let req = Request {
                method: Method::Get,
                url: url.expose(),
                headers: &headers,
                body: &[],
                response_headers: &[],
                timeout: Self::timeout(io),
            };
            requests += 1;
            let n = match self.transport.send(&req, &mut st.mgmt_body) {
                Ok(r) if r.status == 200 => r.body_len,
                // Not found (a status table the DM no longer names), refused, or no answer: the entry waits
                // for the next round or its time.
                _ => continue,
            };
            let Some(row) = status::parse_row(&st.mgmt_body[..n]) else {
                continue;
            };
            let Some(ingested) = status::row_done(&row.status) else {
                continue;
            };
            let mut note = row.note;
            if !ingested && note.error_code.is_empty() {
                // `Skipped`, or a status without a code: not ingested, and sending it again will not help.
                note.error_code = format!("Status_{}", row.status);
                if note.failure_status.is_empty() {
                    note.failure_status = "Permanent".into();
                }
            }
            Self::report_source(&mut st.tracker, &id, ingested, &note, report);
        }
        requests
    }

    /// Reads one notification queue: a peek, and when it saw one of ours a dequeue (one second of invisibility
    /// for the others' messages) and a delete of each of ours. Stops at the first failure: the next poll tries
    /// again.
    fn read_queue(
        &self,
        st: &mut State,
        queue: &SecretString,
        succeeded: bool,
        io: &mut SendIo<'_>,
        report: &mut dyn FnMut(&StatusReport<'_>),
    ) -> u32 {
        let mut requests = 0;
        let headers = [("x-ms-version", STORAGE_VERSION)];
        let get = |st: &mut State,
                   query: &str,
                   requests: &mut u32,
                   timeout: Option<Duration>|
         -> Option<usize> {
            let url = storage::with_query(queue, "messages", query);
            let req = Request {
                method: Method::Get,
                url: url.expose(),
                headers: &headers,
                body: &[],
                response_headers: &[],
                timeout,
            };
            *requests += 1;
            match self.transport.send(&req, &mut st.mgmt_body) {
                Ok(r) if r.status == 200 => Some(r.body_len),
                _ => None,
            }
        };
        let peek = format!("peekonly=true&numofmessages={}", status::PEEK_MESSAGES);
        let take = format!(
            "numofmessages={}&visibilitytimeout={}",
            status::PEEK_MESSAGES,
            status::PAGE_HIDE_SECS
        );
        for page in 0..status::MAX_PAGES {
            if page > 0 && (io.clock.now() >= io.deadline || st.tracker.is_empty()) {
                break;
            }
            let Some(n) = get(st, &peek, &mut requests, Self::timeout(io)) else {
                break;
            };
            let (ours, seen) = {
                let State {
                    mgmt_body,
                    tracker,
                    notification,
                    ..
                } = &mut *st;
                let xml = std::str::from_utf8(&mgmt_body[..n]).unwrap_or("");
                let list = status::parse_messages(xml);
                let ours = list.iter().any(|m| {
                    status::parse_notification(m.text, notification)
                        .is_some_and(|x| tracker.has(&x.source_id))
                });
                (ours, list.len())
            };
            // Nothing of ours in a page that is not full: nothing of ours on the queue now.
            if !ours && seen < status::PEEK_MESSAGES as usize {
                break;
            }
            // Ours in the page, or a full page of others' standing in front of what may be ours: dequeue it (the
            // others' messages are hidden for a few seconds, never deleted) and delete only ours.
            let Some(n) = get(st, &take, &mut requests, Self::timeout(io)) else {
                break;
            };
            requests += self.take_ours(st, queue, n, succeeded, io, report);
        }
        requests
    }

    /// Reports and deletes our notifications in a dequeued page (in `st.mgmt_body[..n]`); others' are left.
    fn take_ours(
        &self,
        st: &mut State,
        queue: &SecretString,
        n: usize,
        succeeded: bool,
        io: &mut SendIo<'_>,
        report: &mut dyn FnMut(&StatusReport<'_>),
    ) -> u32 {
        let mut requests = 0;
        let headers = [("x-ms-version", STORAGE_VERSION)];
        let State {
            mgmt_body,
            tracker,
            notification,
            ..
        } = &mut *st;
        let xml = std::str::from_utf8(&mgmt_body[..n]).unwrap_or("");
        for m in status::parse_messages(xml) {
            let Some(note) = status::parse_notification(m.text, notification) else {
                continue;
            };
            let (Some(pop), true) = (m.pop_receipt, tracker.has(&note.source_id)) else {
                continue;
            };
            Self::report_source(tracker, &note.source_id, succeeded, &note, report);
            // Ours, and read: delete it so that no one reads it again (only ours: others' are theirs).
            let mut path = String::with_capacity(64 + pop.len());
            path.push_str("messages/");
            wire::percent_encode(&mut path, m.id);
            let mut query = String::from("popreceipt=");
            wire::percent_encode(&mut query, pop);
            let url = storage::with_query(queue, &path, &query);
            let req = Request {
                method: Method::Delete,
                url: url.expose(),
                headers: &headers,
                body: &[],
                response_headers: &[],
                timeout: Self::timeout(io),
            };
            requests += 1;
            let limit = io.body.len().min(crate::config::RESPONSE_BODY_BYTES);
            let _ = self.transport.send(&req, &mut io.body[..limit]);
        }
        requests
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // Every field is written whole: a panic elsewhere leaves it usable.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn random(&self) -> u32 {
        let mut b = [0u8; 4];
        let _ = ring::rand::SecureRandom::fill(&self.rng, &mut b);
        u32::from_le_bytes(b)
    }

    fn secs(&self, now: Instant) -> u64 {
        now.saturating_duration_since(self.epoch).as_secs()
    }

    fn timeout(io: &SendIo<'_>) -> Option<Duration> {
        io.hard_deadline
            .map(|d| d.saturating_duration_since(io.clock.now()))
    }

    /// The `Authorization` header for the DM (a zeroed-on-drop string), as streaming builds it.
    #[allow(clippy::result_large_err)]
    fn bearer(&self, force: bool) -> Result<Option<SecretString>, Failure> {
        let Some(cache) = &self.auth else {
            return Ok(None);
        };
        let token = cache.get(self.transport.agent(), force).map_err(|e| {
            let mut f = Failure::network(&format!(
                "no token from {}: {}",
                cache.source_name(),
                e.message
            ));
            if e.kind == ErrorKind::AuthRefused || e.kind == ErrorKind::ConfigInvalidValue {
                f.class = FailureClass::Auth;
            }
            f
        })?;
        let mut header = SecretString::new(String::with_capacity(7 + token.expose().len()));
        header.push_str("Bearer ");
        header.push_str(token.expose());
        Ok(Some(header))
    }

    /// One management command; its answer's body is in `st.mgmt_body[..len]`.
    #[allow(clippy::result_large_err)]
    fn mgmt(
        &self,
        st: &mut State,
        csl: &str,
        io: &mut SendIo<'_>,
        requests: &mut u32,
    ) -> Result<usize, Failure> {
        let body = format!("{{\"db\":\"NetDefaultDB\",\"csl\":\"{csl}\"}}");
        let mut force = false;
        loop {
            let token = self.bearer(force)?;
            let mut rid = String::with_capacity(64);
            rid.push_str(wire::REQUEST_ID_PREFIX);
            rid.push_str(".execute;");
            let id = wire::new_uuid(&self.rng).map_err(|e| Failure::network(&e.message))?;
            rid.push_str(&wire::uuid_text(&id));
            let mut headers: heapless::Vec<(&str, &str), 9> = heapless::Vec::new();
            let _ = headers.push(("Content-Type", "application/json; charset=utf-8"));
            let _ = headers.push(("Accept", "application/json"));
            let _ = headers.push(("x-ms-version", wire::API_VERSION));
            let _ = headers.push(("x-ms-client-request-id", &rid));
            let _ = headers.push(("x-ms-app", &self.app));
            let _ = headers.push(("x-ms-user", &self.user));
            let _ = headers.push(("x-ms-client-version", &self.client_version));
            if let Some(t) = &token {
                let _ = headers.push(("Authorization", t.expose()));
            }
            let req = Request {
                method: Method::Post,
                url: &self.mgmt_url,
                headers: &headers,
                body: body.as_bytes(),
                response_headers: &[],
                timeout: Self::timeout(io),
            };
            *requests += 1;
            let r = self
                .transport
                .send(&req, &mut st.mgmt_body)
                .map_err(|e| network_failure(&e, self.transport.route()))?;
            if r.status == 200 {
                return Ok(r.body_len);
            }
            let reply = classify_kusto(
                r.status,
                r.retry_after.as_deref(),
                &st.mgmt_body[..r.body_len.min(crate::config::RESPONSE_BODY_BYTES)],
                io.clock.wall(),
                io.scratch,
            );
            let mut f = match reply {
                Reply::Failed(f) => f,
                Reply::Acknowledged { .. } => Failure::network("unexpected answer"),
            };
            let can_refresh = self.auth.as_ref().is_some_and(|a| a.can_refresh());
            if f.status == 401 && can_refresh && !force {
                force = true;
                continue;
            }
            // A refused management command is never about the data: keep it.
            if f.class == FailureClass::Rejected {
                f.class = FailureClass::TargetNotReady;
            }
            let msg = format!("{} at {}: {}", csl, self.dm.base, f.message);
            f.message = crate::response::truncated(&msg);
            return Err(f);
        }
    }

    /// Fetches both answers; on success they replace what is in hand.
    #[allow(clippy::result_large_err)]
    fn fetch(
        &self,
        st: &mut State,
        io: &mut SendIo<'_>,
        requests: &mut u32,
    ) -> Result<(), Failure> {
        let unreadable = |what: &str| {
            let mut f = Failure::network(&format!(
                "the answer of {what} at {} is not a data set with the expected columns: check ingest.dm_url",
                self.dm.base
            ));
            f.class = FailureClass::TargetNotReady;
            f
        };
        let n = self.mgmt(st, ".get ingestion resources", io, requests)?;
        let res = resources::parse_resources(&st.mgmt_body[..n])
            .ok_or_else(|| unreadable(".get ingestion resources"))?;
        let n = self.mgmt(st, ".get kusto identity token", io, requests)?;
        let token = resources::parse_identity_token(&st.mgmt_body[..n])
            .ok_or_else(|| unreadable(".get kusto identity token"))?;
        st.mgmt_body[..n].fill(0);
        st.resources = Some(res);
        st.identity = Some(token);
        Ok(())
    }

    /// Makes sure usable resources are in hand, fetching as the schedule says.
    #[allow(clippy::result_large_err)]
    fn ensure(
        &self,
        st: &mut State,
        io: &mut SendIo<'_>,
        requests: &mut u32,
    ) -> Result<(), Failure> {
        let now = io.clock.now();
        if st.schedule.forced
            && st
                .schedule
                .fetched_at
                .is_some_and(|t| now.saturating_duration_since(t) < FORCE_DEBOUNCE)
        {
            st.schedule.forced = false;
        }
        match st.schedule.plan(now) {
            Plan::Use => Ok(()),
            Plan::Wait => {
                let left = st
                    .schedule
                    .not_before
                    .map_or(0, |n| n.saturating_duration_since(now).as_millis());
                let mut f = Failure::network(&format!(
                    "no ingestion resources from {} yet: the last fetch failed; next try in {left} ms",
                    self.dm.base
                ));
                f.retry_after = Some(Duration::from_millis(left as u64));
                Err(f)
            }
            plan => match self.fetch(st, io, requests) {
                Ok(()) => {
                    st.schedule.fetched(io.clock.now());
                    Ok(())
                }
                Err(f) => {
                    st.schedule.failed(io.clock.now());
                    if plan == Plan::Refresh {
                        (io.warn)(&format!(
                            "refreshing the ingestion resources failed, the current ones are still used: {}",
                            f.message
                        ));
                        Ok(())
                    } else {
                        Err(f)
                    }
                }
            },
        }
    }

    /// Runs one storage operation over the ranked resources of `pick`: at most three tries, each recorded.
    /// Returns the index of the resource that took it.
    // A verdict is a fixed-size value on purpose: handling one must not allocate.
    #[allow(clippy::too_many_arguments, clippy::result_large_err)]
    fn storage_op(
        &self,
        st: &mut State,
        pick: fn(&Resources) -> &[resources::StorageUrl],
        op: Op,
        fixed: Option<usize>,
        url_of: &dyn Fn(&SecretString) -> SecretString,
        headers: &[(&str, &str)],
        body: &[u8],
        io: &mut SendIo<'_>,
        requests: &mut u32,
    ) -> Result<usize, storage::Verdict> {
        let secs = self.secs(io.clock.now());
        let order = match fixed {
            // The later blocks of a blob go where its first one went.
            Some(i) => {
                let mut one = heapless::Vec::new();
                let _ = one.push(i);
                one
            }
            None => {
                let res = st.resources.as_ref().expect("ensured");
                rank::choose(pick(res), &st.stats, secs, self.random())
            }
        };
        let op_name = op.name();
        let mut last = None;
        for i in order {
            if last.is_some() && io.clock.now() >= io.deadline {
                break;
            }
            let (url, account) = {
                let r = &pick(st.resources.as_ref().expect("ensured"))[i];
                (url_of(&r.url), r.account.clone())
            };
            let req = Request {
                method: match op {
                    Op::Upload => Method::Put,
                    Op::Enqueue | Op::StatusRow => Method::Post,
                },
                url: url.expose(),
                headers,
                body,
                response_headers: &[],
                timeout: Self::timeout(io),
            };
            *requests += 1;
            let limit = io.body.len().min(crate::config::RESPONSE_BODY_BYTES);
            let v = match self.transport.send(&req, &mut io.body[..limit]) {
                // A status row that is already there: an earlier attempt of this chunk inserted it.
                Ok(r)
                    if (200..300).contains(&r.status)
                        || (op == Op::StatusRow && r.status == 409) =>
                {
                    st.stats.record(&account, true, secs);
                    return Ok(i);
                }
                Ok(r) => storage::classify(r.status, &io.body[..r.body_len], op_name, &account),
                Err(e) => {
                    let mut f = network_failure(&e, self.transport.route());
                    let msg = format!("storage {op_name} on account '{account}': {}", f.message);
                    f.message = crate::response::truncated(&msg);
                    // Another account may be reachable when this one is not; a proxy or trust problem of
                    // ours (not transient) is the same for all.
                    let next = f.class == FailureClass::Transient;
                    storage::Verdict {
                        failure: f,
                        refresh: false,
                        next,
                    }
                }
            };
            st.stats.record(&account, false, secs);
            if !v.next {
                return Err(v);
            }
            last = Some(v);
        }
        Err(last.unwrap_or_else(|| storage::Verdict {
            failure: Failure::network(&format!("no storage resource to {op_name} to")),
            refresh: true,
            next: false,
        }))
    }

    /// Upload, (with the table method) insert the status row, then enqueue; the verdict of the first operation
    /// that failed. Returns which status table holds the row.
    #[allow(clippy::result_large_err)]
    fn upload_and_enqueue(
        &self,
        st: &mut State,
        target: &SinkTarget,
        chunk: &ChunkRef<'_>,
        io: &mut SendIo<'_>,
        requests: &mut u32,
    ) -> Result<u8, storage::Verdict> {
        let key = &target.dest;
        let name = storage::blob_name(
            &key.database,
            &key.table,
            chunk.id,
            target.format.wire_name(),
            chunk.gzip,
        );
        let rid = wire::request_id_for(
            "executeQueuedIngest",
            chunk.id,
            chunk.attempt.saturating_add(*requests),
        );
        let blob_headers = [
            ("x-ms-blob-type", "BlockBlob"),
            ("x-ms-version", STORAGE_VERSION),
            ("x-ms-client-request-id", rid.as_str()),
        ];
        let container = self.storage_op(
            st,
            |r| &r.containers,
            Op::Upload,
            None,
            &|c| storage::blob_url(c, &name),
            &blob_headers,
            chunk.payload,
            io,
            requests,
        )?;
        let blob = {
            let res = st.resources.as_ref().expect("ensured");
            storage::blob_url(&res.containers[container].url, &name)
        };
        self.post(
            st,
            target,
            chunk.id,
            chunk.raw_len,
            &blob,
            &rid,
            io,
            requests,
        )
    }

    /// Uploads the blocks of a merged blob (Put Block each, all to one container, then Put Block List) and
    /// returns the blob's URL.
    #[allow(clippy::result_large_err, clippy::too_many_arguments)]
    fn upload_blocks(
        &self,
        st: &mut State,
        target: &SinkTarget,
        group_id: &str,
        blocks: &mut dyn Blocks,
        rid: &str,
        io: &mut SendIo<'_>,
        requests: &mut u32,
    ) -> Result<SecretString, storage::Verdict> {
        let key = &target.dest;
        let name = storage::blob_name(
            &key.database,
            &key.table,
            group_id,
            target.format.wire_name(),
            true,
        );
        let headers = [
            ("x-ms-version", STORAGE_VERSION),
            ("x-ms-client-request-id", rid),
        ];
        let mut container = None;
        let mut list = String::with_capacity(64 + blocks.count() * 48);
        list.push_str("<?xml version=\"1.0\" encoding=\"utf-8\"?><BlockList>");
        for i in 0..blocks.count() {
            let id = storage::block_id(i);
            let payload = blocks.read(i).map_err(|f| storage::Verdict {
                failure: f,
                refresh: false,
                next: false,
            })?;
            let mut query = String::from("comp=block&blockid=");
            wire::percent_encode(&mut query, &id);
            let c = self.storage_op(
                st,
                |r| &r.containers,
                Op::Upload,
                container,
                &|c| storage::with_query(c, &name, &query),
                &headers,
                payload,
                io,
                requests,
            )?;
            container = Some(c);
            list.push_str("<Latest>");
            list.push_str(&id);
            list.push_str("</Latest>");
        }
        list.push_str("</BlockList>");
        let c = self.storage_op(
            st,
            |r| &r.containers,
            Op::Upload,
            container,
            &|c| storage::with_query(c, &name, "comp=blocklist"),
            &headers,
            list.as_bytes(),
            io,
            requests,
        )?;
        let res = st.resources.as_ref().expect("ensured");
        Ok(storage::blob_url(&res.containers[c].url, &name))
    }

    /// With the blob up: (with the table method) the status row, then the message. Returns which status table
    /// holds the row.
    #[allow(clippy::result_large_err, clippy::too_many_arguments)]
    fn post(
        &self,
        st: &mut State,
        target: &SinkTarget,
        id: &str,
        raw_size: u64,
        blob: &SecretString,
        rid: &str,
        io: &mut SendIo<'_>,
        requests: &mut u32,
    ) -> Result<u8, storage::Verdict> {
        let key = &target.dest;
        let table = if self.method == ReportMethod::Table && self.tracks() {
            let mut row = std::mem::take(&mut st.json);
            message::write_status_row(
                id,
                blob.expose(),
                &key.database,
                &key.table,
                io.clock.wall(),
                &mut row,
            );
            let row_headers = [
                ("Content-Type", "application/json"),
                ("Accept", "application/json;odata=nometadata"),
                ("Prefer", "return-no-content"),
                ("DataServiceVersion", "3.0"),
                ("x-ms-version", STORAGE_VERSION),
                ("x-ms-client-request-id", rid),
            ];
            let r = self.storage_op(
                st,
                |r| &r.status_tables,
                Op::StatusRow,
                None,
                &|t| t.clone(),
                &row_headers,
                row.as_bytes(),
                io,
                requests,
            );
            st.json = row;
            Some(r?)
        } else {
            None
        };
        let table_url = table.map(|i| {
            let res = st.resources.as_ref().expect("ensured");
            res.status_tables[i].url.clone()
        });
        let ok = {
            let m = message::Message {
                id,
                blob_path: blob.expose(),
                raw_size,
                database: &key.database,
                table: &key.table,
                report_level: self.report.level(),
                report_method: self.method.number(),
                created: io.clock.wall(),
                app: &self.app,
                client_version: &self.client_version,
                authorization_context: st.identity.as_ref().map_or("", |t| t.expose()),
                format: target.format.wire_name(),
                mapping: key.mapping.as_deref(),
                status_table: table_url.as_ref().map(|t| t.expose()),
            };
            let mut json = std::mem::take(&mut st.json);
            let ok = message::write_json(&m, &mut json);
            let mut xml = std::mem::take(&mut st.xml);
            message::write_queue_body(&json, &mut xml);
            json.zeroize();
            st.json = json;
            st.xml = xml;
            ok
        };
        if !ok {
            st.xml.zeroize();
            let mut f = Failure::network(&format!(
                "the queue message for chunk {id} would exceed {} bytes of JSON",
                message::MAX_JSON_BYTES
            ));
            f.class = FailureClass::Rejected;
            return Err(storage::Verdict {
                failure: f,
                refresh: false,
                next: false,
            });
        }
        let xml = std::mem::take(&mut st.xml);
        let queue_headers = [
            ("Content-Type", "application/xml"),
            ("x-ms-version", STORAGE_VERSION),
            ("x-ms-client-request-id", rid),
        ];
        let r = self.storage_op(
            st,
            |r| &r.queues,
            Op::Enqueue,
            None,
            &storage::messages_url,
            &queue_headers,
            xml.as_bytes(),
            io,
            requests,
        );
        let mut xml = xml;
        xml.zeroize();
        st.xml = xml;
        r.map(|_| table.map_or(0, |i| i.min(u8::MAX as usize) as u8))
    }

    /// One delivery attempt: resources in hand, then `op` (uploads and the message). A 403 (expired or revoked
    /// SAS) or a 404 (a container the DM no longer hands out) fetches fresh resources and runs `op` once more, at
    /// once.
    #[allow(clippy::result_large_err)]
    fn attempt(&self, target: &SinkTarget, io: &mut SendIo<'_>, op: &mut StorageOps<'_>) -> Sent {
        let mut st = self.lock();
        let mut requests = 0u32;
        let mut refreshed = false;
        loop {
            if let Err(f) = self.ensure(&mut st, io, &mut requests) {
                return failed(f, requests);
            }
            match op(self, &mut st, io, &mut requests) {
                Ok(()) => {
                    return Sent {
                        attempt: Attempt::Queued { status: 201 },
                        requests,
                    }
                }
                Err(v) if v.refresh && !refreshed && io.clock.now() < io.deadline => {
                    refreshed = true;
                    st.schedule.forced = true;
                    (io.warn)(&format!(
                        "{}: {}; fetching new ingestion resources",
                        target.label, v.failure.message
                    ));
                }
                Err(v) => return failed(v.failure, requests),
            }
        }
    }

    /// Remembers posted chunks whose report is awaited: each member under the message's id.
    fn track(
        &self,
        st: &mut State,
        target: &SinkTarget,
        source: &str,
        members: &[(&str, u64, u64)],
        table: u8,
        io: &SendIo<'_>,
    ) {
        if !self.tracks() {
            return;
        }
        let (Ok(source), until) = (
            heapless::String::try_from(source),
            io.clock.now() + status::TRACK_FOR,
        ) else {
            return;
        };
        for &(id, records, raw_len) in members {
            let Ok(id) = heapless::String::try_from(id) else {
                continue;
            };
            let evicted = st.tracker.add(status::Inflight {
                id,
                source: source.clone(),
                dest: target.dest.clone(),
                records,
                raw_len,
                until,
                table,
            });
            if let Some(e) = evicted {
                (io.warn)(&format!(
                    "{} chunks await the DM's report: chunk {} is no longer tracked and stays queued",
                    status::MAX_INFLIGHT,
                    e.id
                ));
            }
        }
        self.awaiting.store(st.tracker.len(), Relaxed);
    }
}

impl Sink for QueuedSink {
    fn id(&self) -> SinkId {
        SinkId::Queued
    }

    fn max_raw_len(&self) -> usize {
        crate::config::MAX_REQUEST_RAW_BYTES
    }

    fn target(&self, key: &DestKey) -> Result<SinkTarget, Error> {
        let format = Format::parse(&key.format)?;
        Ok(SinkTarget {
            url: self.mgmt_url.clone(),
            label: format!("{}.{}", key.database, key.table),
            format,
            dest: key.clone(),
        })
    }

    fn holds_until_reported(&self) -> bool {
        self.report == QueuedReport::All
    }

    fn merges(&self, _target: &SinkTarget, _now: Instant) -> bool {
        true
    }

    #[allow(clippy::result_large_err)]
    fn send_merged(
        &self,
        target: &SinkTarget,
        group_id: &str,
        attempt: u32,
        blocks: &mut dyn Blocks,
        io: &mut SendIo<'_>,
    ) -> Sent {
        let raw: u64 = (0..blocks.count()).map(|i| blocks.info(i).raw_len).sum();
        self.attempt(target, io, &mut |sink, st, io, requests| {
            let rid = wire::request_id_for(
                "executeQueuedIngest",
                group_id,
                attempt.saturating_add(*requests),
            );
            let blob = sink.upload_blocks(st, target, group_id, blocks, &rid, io, requests)?;
            let table = sink.post(st, target, group_id, raw, &blob, &rid, io, requests)?;
            let members: Vec<(&str, u64, u64)> = (0..blocks.count())
                .map(|i| {
                    let b = blocks.info(i);
                    (b.id, b.records, b.raw_len)
                })
                .collect();
            sink.track(st, target, group_id, &members, table, io);
            Ok(())
        })
    }

    fn awaiting(&self) -> usize {
        self.awaiting.load(Relaxed)
    }

    fn poll_status(&self, io: &mut SendIo<'_>, report: &mut dyn FnMut(&StatusReport<'_>)) -> u32 {
        let mut st = self.lock();
        let now = io.clock.now();
        st.tracker.expire(now);
        self.awaiting.store(st.tracker.len(), Relaxed);
        let recent = st
            .last_status_poll
            .is_some_and(|t| now.saturating_duration_since(t) < status::POLL_EVERY);
        if st.tracker.is_empty() || recent {
            return 0;
        }
        st.last_status_poll = Some(now);
        if self.method == ReportMethod::Table {
            let requests = self.read_rows(&mut st, io, report);
            self.awaiting.store(st.tracker.len(), Relaxed);
            return requests;
        }
        // The URLs are copied out (a few, every few seconds) so that the answers can be read into the state.
        let queues: Vec<(SecretString, bool)> = match &st.resources {
            Some(r) => r
                .failed
                .iter()
                .map(|q| (q.url.clone(), false))
                .chain(
                    r.succeeded
                        .iter()
                        .filter(|_| self.report == QueuedReport::All)
                        .map(|q| (q.url.clone(), true)),
                )
                .collect(),
            None => return 0,
        };
        let mut requests = 0;
        for (q, succeeded) in &queues {
            if st.tracker.is_empty() || io.clock.now() >= io.deadline {
                break;
            }
            requests += self.read_queue(&mut st, q, *succeeded, io, report);
        }
        self.awaiting.store(st.tracker.len(), Relaxed);
        requests
    }

    #[allow(clippy::result_large_err)]
    fn send(&self, target: &SinkTarget, chunk: &ChunkRef<'_>, io: &mut SendIo<'_>) -> Sent {
        self.attempt(target, io, &mut |sink, st, io, requests| {
            let table = sink.upload_and_enqueue(st, target, chunk, io, requests)?;
            sink.track(
                st,
                target,
                chunk.id,
                &[(chunk.id, chunk.records, chunk.raw_len)],
                table,
                io,
            );
            Ok(())
        })
    }
}
