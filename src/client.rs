//! The streaming-ingest client: destinations with fixed batch buffers, sending with bounded retries, backoff per
//! destination, delivery reports and statistics. Blocking, no threads of its own: work happens inside `append`,
//! `flush` and `poll`, each bounded by the configured timeouts.
//!
//! Thread rules: a `Client` is `Send + Sync`. Calls are serialised by one lock; a call that sends holds it for at
//! most `retry.max_total_ms` plus one request's timeouts. Statistics and the last error can be read at any time
//! without waiting. Callbacks run on the calling thread with the lock held, so a callback that calls back into
//! the same client gets `ReentrantCall` instead of a deadlock.

use std::cell::Cell;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime};

use ring::rand::{SecureRandom, SystemRandom};

use crate::batch::{validate_record, Batch};
use crate::config::{Config, LogLevel, RESPONSE_BODY_BYTES};
use crate::error::{Error, ErrorKind};
use crate::gzip::Gzip;
use crate::response::{classify, Failure, FailureClass, Reply};
use crate::retry::{backoff_delay, exp_ceiling, honour_retry_after};
use crate::transport::Transport;
use crate::wire::{self, ClusterUrl, Format};

/// The final word on one chunk, as passed to the delivery callback.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u32)]
pub enum Outcome {
    /// The service answered 200.
    Acknowledged = 0,
    /// The service refused the data permanently; it was dropped.
    Rejected = 1,
    /// Sending failed for now; the chunk is kept and retried.
    Failed = 2,
}

/// One delivery report: what happened to a chunk.
#[derive(Debug)]
pub struct DeliveryReport<'a> {
    /// Destination id.
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
    /// The error class for `Rejected` and `Failed`.
    pub error: Option<ErrorKind>,
    /// HTTP status, 0 without an answer.
    pub http_status: u16,
    /// The service's or our message.
    pub message: &'a str,
}

/// Log sink: level and a line of text that never contains a secret.
pub type LogFn = Arc<dyn Fn(LogLevel, &str) + Send + Sync>;
/// Delivery report sink.
pub type DeliveryFn = Arc<dyn Fn(&DeliveryReport<'_>) + Send + Sync>;

/// Counters, readable at any time without taking the client's lock.
#[derive(Default, Debug)]
pub struct Stats {
    /// Records taken by `append`.
    pub records_appended: AtomicU64,
    /// Raw bytes taken by `append`.
    pub bytes_appended: AtomicU64,
    /// Records in requests that were sent, whatever the answer (counted once per request).
    pub records_sent: AtomicU64,
    /// Raw bytes in requests sent.
    pub bytes_sent_raw: AtomicU64,
    /// Body bytes on the wire.
    pub bytes_sent_wire: AtomicU64,
    /// Records the service acknowledged.
    pub records_acknowledged: AtomicU64,
    /// Chunks the service acknowledged.
    pub chunks_acknowledged: AtomicU64,
    /// Records the service refused permanently.
    pub records_rejected: AtomicU64,
    /// HTTP requests made.
    pub requests: AtomicU64,
    /// Requests that were retries of a chunk.
    pub retries: AtomicU64,
    /// Requests that failed, any class.
    pub failures: AtomicU64,
    /// Records in RAM now.
    pub records_buffered: AtomicU64,
    /// Status of the last answer (0: none yet, or no answer).
    pub last_http_status: AtomicU64,
}

/// A plain copy of [`Stats`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct StatsSnapshot {
    /// See [`Stats`].
    pub records_appended: u64,
    /// See [`Stats`].
    pub bytes_appended: u64,
    /// See [`Stats`].
    pub records_sent: u64,
    /// See [`Stats`].
    pub bytes_sent_raw: u64,
    /// See [`Stats`].
    pub bytes_sent_wire: u64,
    /// See [`Stats`].
    pub records_acknowledged: u64,
    /// See [`Stats`].
    pub chunks_acknowledged: u64,
    /// See [`Stats`].
    pub records_rejected: u64,
    /// See [`Stats`].
    pub requests: u64,
    /// See [`Stats`].
    pub retries: u64,
    /// See [`Stats`].
    pub failures: u64,
    /// See [`Stats`].
    pub records_buffered: u64,
    /// See [`Stats`].
    pub last_http_status: u32,
    /// Destinations added.
    pub destinations: u32,
}

struct Destination {
    database: String,
    table: String,
    format: Format,
    url: String,
    batch: Batch,
    /// Consecutive failed sends.
    failures: u32,
    /// No send before this instant (backing off).
    not_before: Option<Instant>,
    last_failure: Option<Failure>,
}

impl Destination {
    fn label(&self) -> String {
        format!("{}.{}", self.database, self.table)
    }
}

struct Inner {
    destinations: Vec<Destination>,
    gzip: Gzip,
    wire: Vec<u8>,
    body: Box<[u8]>,
    scratch: Box<[u8]>,
}

/// A streaming-ingest client. See the module docs for the thread rules.
pub struct Client {
    cfg: Config,
    cluster: ClusterUrl,
    transport: Transport,
    rng: SystemRandom,
    client_version: String,
    inner: Mutex<Inner>,
    stats: Stats,
    destination_count: AtomicU64,
    last_error: Mutex<String>,
    log: Option<LogFn>,
    delivery: Option<DeliveryFn>,
}

thread_local! {
    /// Set while this thread holds some client's lock: a callback calling back in must not deadlock.
    static IN_CLIENT: Cell<bool> = const { Cell::new(false) };
}

struct Locked<'a> {
    guard: MutexGuard<'a, Inner>,
}

impl Drop for Locked<'_> {
    fn drop(&mut self) {
        IN_CLIENT.with(|c| c.set(false));
    }
}

/// Why a send did not go through this time.
enum SendMode {
    /// `append` needs room: honour backoff.
    Room,
    /// Explicit flush: honour backoff.
    Flush,
    /// `poll` found the batch due.
    Poll,
}

impl Client {
    /// Creates a client: validates the config and allocates every buffer it will ever use, except the batch
    /// buffers, which are allocated (bounded by `destinations.max`) as destinations are added.
    pub fn new(cfg: &Config, log: Option<LogFn>, delivery: Option<DeliveryFn>) -> Result<Client, Error> {
        let cluster = cfg.validate()?;
        let transport = Transport::new(cfg)?;
        let inner = Inner {
            destinations: Vec::with_capacity(cfg.max_destinations),
            gzip: Gzip::new(3),
            wire: Vec::with_capacity(cfg.wire_capacity()),
            body: vec![0u8; RESPONSE_BODY_BYTES].into_boxed_slice(),
            scratch: vec![0u8; RESPONSE_BODY_BYTES].into_boxed_slice(),
        };
        Ok(Client {
            client_version: wire::client_version(&cfg.app, cfg.app_version.as_deref()),
            cfg: cfg.clone(),
            cluster,
            transport,
            rng: SystemRandom::new(),
            inner: Mutex::new(inner),
            stats: Stats::default(),
            destination_count: AtomicU64::new(0),
            last_error: Mutex::new(String::new()),
            log,
            delivery,
        })
    }

    fn lock(&self) -> Result<Locked<'_>, Error> {
        if IN_CLIENT.with(|c| c.get()) {
            return Err(Error::new(
                ErrorKind::ReentrantCall,
                "a client function was called from inside a callback: callbacks may only read stats",
            ));
        }
        // A panic in an earlier call poisoned the lock; the state is still consistent batch by batch, so go on.
        let guard = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        IN_CLIENT.with(|c| c.set(true));
        Ok(Locked { guard })
    }

    fn log(&self, level: LogLevel, msg: &str) {
        if level <= self.cfg.log_level {
            if let Some(f) = &self.log {
                f(level, msg);
            }
        }
    }

    /// Remembers a failure for `last_error` and passes it on.
    pub fn record_error(&self, e: Error) -> Error {
        let mut last = self.last_error.lock().unwrap_or_else(|p| p.into_inner());
        last.clear();
        last.push_str(&e.message);
        e
    }

    /// The message of the most recent failed call (empty if none). With several threads, it may be another
    /// thread's.
    pub fn last_error(&self) -> String {
        self.last_error.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// The counters, without waiting for a send in progress.
    pub fn stats(&self) -> StatsSnapshot {
        let s = &self.stats;
        StatsSnapshot {
            records_appended: s.records_appended.load(Relaxed),
            bytes_appended: s.bytes_appended.load(Relaxed),
            records_sent: s.records_sent.load(Relaxed),
            bytes_sent_raw: s.bytes_sent_raw.load(Relaxed),
            bytes_sent_wire: s.bytes_sent_wire.load(Relaxed),
            records_acknowledged: s.records_acknowledged.load(Relaxed),
            chunks_acknowledged: s.chunks_acknowledged.load(Relaxed),
            records_rejected: s.records_rejected.load(Relaxed),
            requests: s.requests.load(Relaxed),
            retries: s.retries.load(Relaxed),
            failures: s.failures.load(Relaxed),
            records_buffered: s.records_buffered.load(Relaxed),
            last_http_status: s.last_http_status.load(Relaxed) as u32,
            destinations: self.destination_count.load(Relaxed) as u32,
        }
    }

    /// The configuration the client was built from.
    pub fn config(&self) -> &Config {
        &self.cfg
    }

    /// Adds a destination and allocates its batch buffer. Returns its id, used by `append`.
    pub fn add_destination(&self, database: &str, table: &str, format: &str, mapping: Option<&str>) -> Result<u32, Error> {
        wire::check_entity_name("database", database)?;
        wire::check_entity_name("table", table)?;
        if let Some(m) = mapping {
            wire::check_entity_name("mapping", m)?;
        }
        let format = Format::parse(format)?;
        let mut l = self.lock()?;
        let inner = &mut *l.guard;
        if inner.destinations.len() >= self.cfg.max_destinations {
            return Err(Error::new(
                ErrorKind::TooManyDestinations,
                format!("this client already has destinations.max={} destinations", self.cfg.max_destinations),
            ));
        }
        inner.destinations.push(Destination {
            database: database.to_owned(),
            table: table.to_owned(),
            format,
            url: wire::ingest_url(&self.cluster, database, table, format, mapping),
            batch: Batch::with_capacity(self.cfg.batch_bytes),
            failures: 0,
            not_before: None,
            last_failure: None,
        });
        self.destination_count.store(inner.destinations.len() as u64, Relaxed);
        Ok((inner.destinations.len() - 1) as u32)
    }

    /// Buffers one record. When it does not fit, the batch is sent first; if that fails, the record is not taken
    /// (the caller keeps it) and the error says why.
    pub fn append(&self, destination: u32, record: &[u8]) -> Result<(), Error> {
        let mut l = self.lock()?;
        let inner = &mut *l.guard;
        let d = inner.destinations.get(destination as usize).ok_or_else(|| invalid_destination(destination))?;
        let format = d.format;
        validate_record(format, record, d.batch.capacity())?;
        if !d.batch.fits(format, record) {
            self.send(inner, destination as usize, SendMode::Room, None)?;
        }
        let d = &mut inner.destinations[destination as usize];
        if !d.batch.fits(format, record) {
            return Err(Error::new(ErrorKind::Internal, "batch has no room after a successful send"));
        }
        d.batch.push(format, record, Instant::now());
        self.stats.records_appended.fetch_add(1, Relaxed);
        self.stats.bytes_appended.fetch_add(record.len() as u64, Relaxed);
        self.stats.records_buffered.fetch_add(1, Relaxed);
        Ok(())
    }

    /// Sends every non-empty batch now. Destinations that are backing off are tried anyway (an explicit flush is
    /// the caller's decision), but the whole call is bounded by one `retry.max_total_ms`. Returns the first failure.
    pub fn flush(&self) -> Result<(), Error> {
        let mut l = self.lock()?;
        let inner = &mut *l.guard;
        let deadline = Instant::now() + self.cfg.retry_max_total;
        let mut first_err = None;
        for i in 0..inner.destinations.len() {
            if inner.destinations[i].batch.is_empty() {
                continue;
            }
            if let Err(e) = self.send(inner, i, SendMode::Flush, Some(deadline)) {
                first_err.get_or_insert(e);
            }
        }
        first_err.map_or(Ok(()), Err)
    }

    /// Periodic work for a firmware main loop: sends batches older than `batch.max_age_ms` and retries
    /// destinations whose backoff has run out. Returns the milliseconds until the next poll has something to do.
    pub fn poll(&self) -> Result<u32, Error> {
        let mut l = self.lock()?;
        let inner = &mut *l.guard;
        let deadline = Instant::now() + self.cfg.retry_max_total;
        let mut first_err = None;
        for i in 0..inner.destinations.len() {
            let now = Instant::now();
            let d = &inner.destinations[i];
            let due = match d.batch.first_at() {
                None => false,
                Some(_) if d.not_before.is_some_and(|t| t > now) => false,
                Some(_) if d.batch.is_sealed() => true,
                Some(first) => now.duration_since(first) >= self.cfg.batch_max_age,
            };
            if due {
                if let Err(e) = self.send(inner, i, SendMode::Poll, Some(deadline)) {
                    first_err.get_or_insert(e);
                }
            }
        }
        let next = self.next_due(inner);
        first_err.map_or(Ok(next), Err)
    }

    fn next_due(&self, inner: &Inner) -> u32 {
        let now = Instant::now();
        let mut next = Duration::from_secs(3600);
        for d in &inner.destinations {
            let Some(first) = d.batch.first_at() else { continue };
            let at = match d.not_before {
                Some(t) if t > now => t,
                _ if d.batch.is_sealed() => now,
                _ => first + self.cfg.batch_max_age,
            };
            next = next.min(at.saturating_duration_since(now));
        }
        next.as_millis().min(u32::MAX as u128) as u32
    }

    fn random_u32(&self) -> u32 {
        let mut b = [0u8; 4];
        // A failed draw only makes the jitter less random.
        let _ = self.rng.fill(&mut b);
        u32::from_le_bytes(b)
    }

    /// Sends destination `i`'s batch, retrying transient failures within the configured bounds. On success the
    /// batch is empty; on a permanent refusal it is dropped (and reported); otherwise it is kept, sealed, and the
    /// destination backs off.
    fn send(&self, inner: &mut Inner, i: usize, mode: SendMode, deadline: Option<Instant>) -> Result<(), Error> {
        let started = Instant::now();
        let call_deadline = started + self.cfg.retry_max_total;
        let deadline = deadline.map_or(call_deadline, |d| d.min(call_deadline));
        {
            let d = &inner.destinations[i];
            if d.batch.is_empty() {
                return Ok(());
            }
            let backing_off = d.not_before.is_some_and(|t| t > started);
            if backing_off && matches!(mode, SendMode::Room | SendMode::Poll) {
                let wait = d.not_before.map_or(Duration::ZERO, |t| t - started);
                let why = d.last_failure.as_ref().map_or(String::new(), |f| format!(" after: {}", f.message));
                return Err(Error::new(
                    ErrorKind::BackingOff,
                    format!(
                        "{} is backing off for {} ms more{why}; its batch of {} records is kept and the record was not taken",
                        d.label(),
                        wait.as_millis(),
                        d.batch.records()
                    ),
                ));
            }
            if Instant::now() >= deadline && d.batch.is_sealed() {
                return Err(Error::new(
                    ErrorKind::BackingOff,
                    format!("{}: no time left in this call to send; poll will retry", d.label()),
                ));
            }
        }
        let Inner { destinations, gzip, wire: wire_buf, body, scratch } = inner;
        let d = &mut destinations[i];
        let chunk_id = match d.batch.chunk_id {
            Some(id) => id,
            None => {
                let id = wire::new_uuid(&self.rng)?;
                d.batch.chunk_id = Some(id);
                id
            }
        };
        let chunk_text = wire::uuid_text(&chunk_id);
        let gz = !d.format.is_binary();
        if gz {
            gzip.compress(d.batch.bytes(), wire_buf)?;
        } else {
            // Already compressed formats go as they are; the copy keeps one code path for sending and resending.
            wire_buf.clear();
            wire_buf.extend_from_slice(d.batch.bytes());
        }
        let payload: &[u8] = wire_buf;
        let records = d.batch.records();
        let raw_len = d.batch.bytes().len() as u64;
        let token = self.cfg.token.as_ref().map(|t| format!("Bearer {}", t.expose()));
        let mut attempt_in_call = 0u32;
        let failure = loop {
            let request_id = wire::request_id(&chunk_text, d.batch.attempts);
            let mut headers: heapless::Vec<(&'static str, &str), 10> = heapless::Vec::new();
            let _ = headers.push(("x-ms-client-request-id", &request_id));
            let _ = headers.push(("x-ms-version", wire::API_VERSION));
            let _ = headers.push(("x-ms-app", &self.cfg.app));
            let _ = headers.push(("x-ms-user", &self.cfg.user));
            let _ = headers.push(("x-ms-client-version", &self.client_version));
            let _ = headers.push(("Accept", "application/json"));
            if gz {
                let _ = headers.push(("Content-Encoding", "gzip"));
            }
            if let Some(t) = &token {
                let _ = headers.push(("Authorization", t));
            }
            if d.batch.attempts > 0 {
                self.stats.retries.fetch_add(1, Relaxed);
            }
            d.batch.attempts = d.batch.attempts.saturating_add(1);
            attempt_in_call += 1;
            self.stats.requests.fetch_add(1, Relaxed);
            self.stats.records_sent.fetch_add(records, Relaxed);
            self.stats.bytes_sent_raw.fetch_add(raw_len, Relaxed);
            self.stats.bytes_sent_wire.fetch_add(payload.len() as u64, Relaxed);
            let reply = match self.transport.post(&d.url, &headers, payload, body) {
                Ok(r) => {
                    self.stats.last_http_status.store(r.status as u64, Relaxed);
                    classify(r.status, r.retry_after.as_deref(), &body[..r.body_len], SystemTime::now(), scratch)
                }
                Err(f) => {
                    self.stats.last_http_status.store(0, Relaxed);
                    Reply::Failed(f)
                }
            };
            let f = match reply {
                Reply::Acknowledged { consumed } => {
                    if consumed.is_some_and(|c| c != records) {
                        self.log(
                            LogLevel::Warn,
                            &format!("{}: chunk {chunk_text} of {records} records acknowledged with ConsumedRecordsCount={}", d.label(), consumed.unwrap_or(0)),
                        );
                    }
                    self.log(
                        LogLevel::Info,
                        &format!("{}: chunk {chunk_text} acknowledged: {records} records, {raw_len} bytes raw, {} on the wire", d.label(), payload.len()),
                    );
                    self.stats.records_acknowledged.fetch_add(records, Relaxed);
                    self.stats.chunks_acknowledged.fetch_add(1, Relaxed);
                    self.report(i as u32, &chunk_text, records, raw_len, payload.len() as u64, Outcome::Acknowledged, None, 200, "acknowledged");
                    d.batch.clear();
                    d.failures = 0;
                    d.not_before = None;
                    d.last_failure = None;
                    self.stats.records_buffered.fetch_sub(records, Relaxed);
                    return Ok(());
                }
                Reply::Failed(f) => f,
            };
            self.stats.failures.fetch_add(1, Relaxed);
            let now = Instant::now();
            let retry_in_call = f.class == FailureClass::Transient && attempt_in_call < self.cfg.retry_max_attempts;
            if retry_in_call {
                let delay = backoff_delay(attempt_in_call - 1, self.cfg.retry_base, self.cfg.retry_max_delay, self.random_u32());
                let delay = honour_retry_after(delay, f.retry_after, self.cfg.backoff_max);
                if now + delay < deadline {
                    self.log(
                        LogLevel::Warn,
                        &format!("{}: attempt {attempt_in_call} failed ({}); retrying in {} ms", d.label(), describe(&f), delay.as_millis()),
                    );
                    std::thread::sleep(delay);
                    continue;
                }
            }
            break f;
        };
        let label = d.label();
        let kind = match failure.class {
            FailureClass::Transient => ErrorKind::TransientFailure,
            FailureClass::Rejected => ErrorKind::DataRejected,
            FailureClass::TargetNotReady => ErrorKind::TargetNotReady,
            FailureClass::Auth => ErrorKind::AuthRefused,
        };
        let message = format!("{label}: {}: {}", describe(&failure), failure.advice());
        if failure.class == FailureClass::Rejected {
            self.log(LogLevel::Error, &format!("chunk {chunk_text} ({records} records) dropped: {message}"));
            self.stats.records_rejected.fetch_add(records, Relaxed);
            self.stats.records_buffered.fetch_sub(records, Relaxed);
            self.report(i as u32, &chunk_text, records, raw_len, payload.len() as u64, Outcome::Rejected, Some(kind), failure.status, &message);
            d.batch.clear();
            // The target itself is fine: no backoff for the next batch.
            d.failures = 0;
            d.not_before = None;
            return Err(Error::new(kind, message));
        }
        // Keep the chunk and back off: exponentially per consecutive failed send, longer for problems an operator
        // must fix, never shorter than the server asked.
        d.failures = d.failures.saturating_add(1);
        let base = match failure.class {
            FailureClass::Transient => self.cfg.retry_base.max(Duration::from_millis(100)),
            _ => Duration::from_secs(5),
        };
        let ceiling = exp_ceiling(d.failures, base, self.cfg.backoff_max);
        let wait = honour_retry_after(ceiling / 2 + backoff_delay(0, ceiling / 2, ceiling, self.random_u32()), failure.retry_after, self.cfg.backoff_max);
        d.not_before = Some(Instant::now() + wait);
        self.log(
            LogLevel::Error,
            &format!("chunk {chunk_text} ({records} records) not delivered: {message}; next try in {} ms", wait.as_millis()),
        );
        self.report(i as u32, &chunk_text, records, raw_len, payload.len() as u64, Outcome::Failed, Some(kind), failure.status, &message);
        d.last_failure = Some(failure);
        Err(Error::new(kind, message))
    }

    #[allow(clippy::too_many_arguments)]
    fn report(&self, destination: u32, chunk_id: &str, records: u64, raw: u64, wire: u64, outcome: Outcome, error: Option<ErrorKind>, status: u16, message: &str) {
        if let Some(f) = &self.delivery {
            f(&DeliveryReport {
                destination,
                chunk_id,
                records,
                raw_bytes: raw,
                wire_bytes: wire,
                outcome,
                error,
                http_status: status,
                message,
            });
        }
    }
}

impl Drop for Client {
    fn drop(&mut self) {
        let buffered = self.stats.records_buffered.load(Relaxed);
        if buffered > 0 {
            self.log(
                LogLevel::Warn,
                &format!("client freed with {buffered} records not delivered: call kedge_flush before kedge_client_free"),
            );
        }
    }
}

fn invalid_destination(id: u32) -> Error {
    Error::new(ErrorKind::InvalidDestination, format!("destination {id} does not exist: use an id from kedge_client_add_destination"))
}

fn describe(f: &Failure) -> String {
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
