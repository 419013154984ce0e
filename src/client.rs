//! The streaming-ingest client: destinations with fixed batch buffers, sending with bounded retries, backoff per
//! target, the flash spool for what could not be delivered, delivery reports and statistics. Blocking, no threads
//! of its own: work happens inside `append`, `flush` and `poll`, each bounded by the configured timeouts.
//!
//! Thread rules: a `Client` is `Send + Sync`. Calls are serialised by one lock; a call that sends holds it for at
//! most `retry.max_total_ms` plus one request's timeouts. Statistics and the last error can be read at any time
//! without waiting. Callbacks run on the calling thread with the lock held, so a callback that calls back into
//! the same client gets `ReentrantCall` instead of a deadlock.
//!
//! Delivery order, with a spool: chunks of one destination leave the spool oldest first; fresh batches are sent
//! as they fill, so while a backlog drains, fresh data may arrive before older spooled data (Kusto keeps no
//! order among ingested chunks anyway; records carry their own timestamps). While a target backs off, its new
//! batches go straight to the spool behind the older ones.

use std::cell::Cell;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use ring::rand::{SecureRandom, SystemRandom};

use crate::auth::{SecretString, TokenCache};
use crate::batch::{validate_record, Batch};
use crate::config::{Config, LogLevel, RESPONSE_BODY_BYTES};
use crate::error::{Error, ErrorKind};
use crate::gzip::{compressed_bound, Gzip};
use crate::response::{classify, Failure, FailureClass, Reply};
use crate::retry::Backoff;
use crate::spool::{ChunkHeader, DestKey, FsStorage, Spool, SpoolConfig, SpoolError, Storage};
use crate::transport::Transport;
use crate::wire::{self, ClusterUrl, Format};

// A full batch always fits a spool chunk.
const _: () = assert!(
    compressed_bound(crate::config::MAX_REQUEST_RAW_BYTES) <= crate::spool::MAX_PAYLOAD_LEN
);

/// How many times a refused chunk is halved, at most, to find the refused records (2^20 records: more than a
/// 4 MiB batch can hold, so in practice every bad record is found).
const MAX_SPLIT_DEPTH: u32 = 20;

/// Requests one refused chunk may cost while its refused records are looked for. Past it, refused pieces are
/// rejected whole: a chunk whose every record is refused (a wrong mapping, say) costs this many requests, not
/// two per record.
const MAX_ISOLATION_SENDS: u32 = 64;

/// The final word on one chunk, as passed to the delivery callback.
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
    /// The error class for outcomes other than `Acknowledged`.
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
/// Where the spool keeps its files: a directory by default, anything that keeps POSIX promises in tests.
pub type SpoolStorage = Box<dyn Storage + Send>;

macro_rules! counters {
    ($(#[$m:meta])* $name:ident / $snap:ident { $($(#[$fm:meta])* $field:ident,)* }) => {
        /// Counters, readable at any time without taking the client's lock.
        #[derive(Default, Debug)]
        pub struct $name { $($(#[$fm])* pub $field: AtomicU64,)* }
        /// A plain copy of the counters.
        #[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
        pub struct $snap { $($(#[$fm])* pub $field: u64,)* }
        impl $name {
            /// Copies every counter.
            pub fn snapshot(&self) -> $snap { $snap { $($field: self.$field.load(Relaxed),)* } }
        }
    };
}

counters! {
    Stats / StatsSnapshot {
        /// Records taken by `append`.
        records_appended,
        /// Raw bytes taken by `append`.
        bytes_appended,
        /// Records in requests sent, whatever the answer (counted once per request).
        records_sent,
        /// Raw bytes in requests sent.
        bytes_sent_raw,
        /// Body bytes on the wire.
        bytes_sent_wire,
        /// Records the service acknowledged.
        records_acknowledged,
        /// Chunks the service acknowledged.
        chunks_acknowledged,
        /// Records the service refused permanently (dropped or quarantined).
        records_rejected,
        /// Chunks the service refused permanently.
        chunks_rejected,
        /// HTTP requests made.
        requests,
        /// Requests that resent a chunk.
        retries,
        /// Requests that failed, any class.
        failures,
        /// Records in RAM now.
        records_buffered,
        /// Status of the last answer (0: none yet, or no answer).
        last_http_status,
        /// Destinations added.
        destinations,
        /// Chunks written to the spool.
        chunks_spooled,
        /// Records written to the spool.
        records_spooled,
        /// Bytes written to the spool (payloads: the compressed size).
        bytes_spooled,
        /// Spooled chunks the service acknowledged.
        chunks_replayed,
        /// Records of spooled chunks the service acknowledged.
        records_replayed,
        /// Chunks the full spool dropped (policy drop-oldest).
        chunks_dropped,
        /// Records the full spool dropped.
        records_dropped,
        /// Bytes the full spool dropped.
        bytes_dropped,
        /// Chunks found corrupt in the spool (quarantined in `corrupt/`, never sent).
        chunks_corrupt,
        /// Chunks in the spool now.
        spool_chunks,
        /// Bytes in the spool now.
        spool_bytes,
        /// Spool writes, removals and moves that failed (read-only or failing flash, full disk): each one is also
        /// logged at error level and returned as `SpoolIo` by the call it happened in.
        spool_io_errors,
        /// Chunks found at open that the configured `spool.key_file` cannot open (another key, no key, or a
        /// plain chunk with a key): kept untouched, never sent, until a client opens the spool with their key.
        chunks_locked,
    }
}

/// Where chunks go: one per distinct (database, table, format, mapping), shared by the destination added for
/// it and by spooled chunks for it, so that both back off together.
struct Target {
    key: Arc<DestKey>,
    url: String,
    label: String,
    /// Destination id added for this key in this run, if any.
    destination: Option<u32>,
    /// Consecutive failed sends.
    failures: u32,
    /// No send before this instant (backing off).
    not_before: Option<Instant>,
    last_failure: Option<Failure>,
}

impl Target {
    fn backing_off(&self, now: Instant) -> bool {
        self.not_before.is_some_and(|t| t > now)
    }
}

struct Destination {
    target: usize,
    format: Format,
    batch: Batch,
}

struct Inner {
    destinations: Vec<Destination>,
    targets: Vec<Target>,
    gzip: Gzip,
    wire: Vec<u8>,
    body: Box<[u8]>,
    scratch: Box<[u8]>,
    spool: Option<Spool<SpoolStorage>>,
    /// A spool failure that did not stop the call (an acknowledged chunk that could not be removed): the call
    /// still returns `SpoolIo` so the caller learns that its flash is failing.
    spool_fault: Option<String>,
}

/// A chunk ready to go: its payload is in `Inner::wire`.
#[derive(Clone, Copy)]
struct Chunk {
    id: [u8; 16],
    records: u64,
    raw_len: u64,
    gzip: bool,
    /// Its spool sequence number, when it is in the spool.
    seq: Option<u64>,
}

/// What one delivery attempt (with its in-call retries) came to.
// A failure is a fixed-size value on purpose: handling one must not allocate.
#[allow(clippy::large_enum_variant)]
enum Sent {
    Acknowledged,
    Failed(Failure),
}

/// A streaming-ingest client. See the module docs for the thread rules.
pub struct Client {
    cfg: Config,
    cluster: ClusterUrl,
    transport: Transport,
    auth: Option<TokenCache>,
    rng: SystemRandom,
    client_version: String,
    inner: Mutex<Inner>,
    stats: Stats,
    replay_attempt: AtomicU32,
    last_error: Mutex<String>,
    log: Option<LogFn>,
    delivery: Option<DeliveryFn>,
}

/// Clients whose lock this thread holds (by address), innermost last: a callback calling back into the same
/// client must get an error, not a deadlock, while calling another client is fine. Nesting is shallow in
/// practice; a fixed array keeps the lock path free of allocation.
const MAX_NESTED_CLIENTS: usize = 8;

thread_local! {
    static HELD: Cell<([usize; MAX_NESTED_CLIENTS], usize)> = const { Cell::new(([0; MAX_NESTED_CLIENTS], 0)) };
}

struct Locked<'a> {
    guard: MutexGuard<'a, Inner>,
}

impl Drop for Locked<'_> {
    fn drop(&mut self) {
        HELD.with(|h| {
            let (mut held, n) = h.get();
            if n > 0 {
                held[n - 1] = 0;
                h.set((held, n - 1));
            }
        });
    }
}

fn now_unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

fn spool_error(e: SpoolError) -> Error {
    let kind = match e {
        SpoolError::Full => ErrorKind::SpoolFull,
        _ => ErrorKind::SpoolIo,
    };
    Error::new(kind, e.to_string())
}

impl Client {
    /// Creates a client: validates the config, opens (and recovers) the spool if one is configured, and allocates
    /// every buffer it will use, except the batch buffers, allocated (bounded by `destinations.max`) as
    /// destinations are added.
    pub fn new(
        cfg: &Config,
        log: Option<LogFn>,
        delivery: Option<DeliveryFn>,
    ) -> Result<Client, Error> {
        let storage: Option<SpoolStorage> = match &cfg.spool_dir {
            Some(dir) => Some(Box::new(FsStorage::new(dir).map_err(|e| {
                Error::new(
                    ErrorKind::SpoolIo,
                    format!("spool directory '{}' cannot be used: {e}", dir.display()),
                )
            })?)),
            None => None,
        };
        Client::with_storage(cfg, storage, log, delivery)
    }

    /// Like [`Client::new`], with the spool on the given storage (tests use a fault-injecting one).
    pub fn with_storage(
        cfg: &Config,
        storage: Option<SpoolStorage>,
        log: Option<LogFn>,
        delivery: Option<DeliveryFn>,
    ) -> Result<Client, Error> {
        let cluster = cfg.validate()?;
        let transport = Transport::new(cfg, &cluster)?;
        let auth = cfg.auth.build(
            Some(&cluster.base()),
            cfg.retry_max_total,
            crate::clock::system(),
        )?;
        let rng = SystemRandom::new();
        let mut seed = [0u8; 4];
        let _ = rng.fill(&mut seed);
        let client = Client {
            client_version: wire::client_version(&cfg.app, cfg.app_version.as_deref()),
            cfg: cfg.clone(),
            cluster,
            transport,
            auth,
            rng,
            inner: Mutex::new(Inner {
                destinations: Vec::with_capacity(cfg.max_destinations),
                targets: Vec::with_capacity(cfg.max_destinations),
                gzip: Gzip::new(3),
                wire: Vec::with_capacity(cfg.wire_capacity()),
                body: vec![0u8; RESPONSE_BODY_BYTES].into_boxed_slice(),
                scratch: vec![0u8; RESPONSE_BODY_BYTES].into_boxed_slice(),
                spool: None,
                spool_fault: None,
            }),
            stats: Stats::default(),
            // Replays after a reboot must not repeat the request ids of the previous run: start at a random
            // attempt number, far above those of fresh sends.
            replay_attempt: AtomicU32::new(1000 + (u32::from_le_bytes(seed) >> 12)),
            last_error: Mutex::new(String::new()),
            log,
            delivery,
        };
        if let Some(storage) = storage {
            let scfg = SpoolConfig {
                max_bytes: cfg.spool_max_bytes,
                max_chunks: cfg.spool_max_chunks,
                policy: cfg.spool_policy,
                key: cfg.spool_key.as_ref().map(|k| k.0),
                trim_on_open: cfg.spool_trim_on_open,
            };
            let (spool, report) = Spool::open(storage, scfg).map_err(spool_error)?;
            // Whatever open could not keep pending is data a person must hear about.
            if report.corrupt > 0 {
                client.log(
                    LogLevel::Error,
                    &format!("spool: {} corrupt chunks (failed checksum or torn) moved to corrupt/, they will not be sent", report.corrupt),
                );
            }
            if report.dropped.chunks > 0 {
                client.log(
                    LogLevel::Error,
                    &format!(
                        "spool: dropped the {} oldest chunks ({} records, {} bytes) to fit the lowered limits (spool.trim_on_open=true)",
                        report.dropped.chunks, report.dropped.records, report.dropped.bytes
                    ),
                );
            }
            if report.locked > 0 {
                let wanted = if cfg.spool_key.is_some() {
                    "sealed under another key, or stored in clear while spool.key_file is set"
                } else {
                    "sealed, and no spool.key_file is set"
                };
                client.log(
                    LogLevel::Error,
                    &format!(
                        "spool: {} chunks ({} bytes) cannot be opened with this configuration ({wanted}): they are kept untouched and will be sent when the spool is opened with their key",
                        report.locked, report.locked_bytes
                    ),
                );
            }
            if report.over_limit {
                client.log(
                    LogLevel::Error,
                    &format!(
                        "spool holds {} chunks ({} bytes), more than spool.max_chunks={} / spool.max_bytes={}: all are kept and replayed; new chunks are refused until it drains below the limits (set spool.trim_on_open=true to drop the oldest instead)",
                        report.chunks, report.bytes, cfg.spool_max_chunks, cfg.spool_max_bytes
                    ),
                );
            }
            if report.removed_partial > 0 {
                client.log(
                    LogLevel::Warn,
                    &format!(
                        "spool recovered: {} interrupted writes removed (never acknowledged as durable)",
                        report.removed_partial
                    ),
                );
            }
            if report.chunks > 0 {
                client.log(
                    LogLevel::Info,
                    &format!(
                        "spool holds {} chunks ({} bytes) to replay",
                        report.chunks, report.bytes
                    ),
                );
            }
            let mut inner = client.inner.lock().unwrap_or_else(|p| p.into_inner());
            inner.spool = Some(spool);
            client.sync_spool_stats(&inner);
        }
        Ok(client)
    }

    fn lock(&self) -> Result<Locked<'_>, Error> {
        let me = self as *const Client as usize;
        let (held, n) = HELD.with(|h| h.get());
        if held[..n].contains(&me) {
            return Err(Error::new(
                ErrorKind::ReentrantCall,
                "a client function was called from inside one of that client's callbacks: callbacks may only read its stats",
            ));
        }
        if n == MAX_NESTED_CLIENTS {
            return Err(Error::new(
                ErrorKind::ReentrantCall,
                "clients nested more than 8 deep through callbacks",
            ));
        }
        // A panic in an earlier call poisoned the lock; every batch and the spool are consistent on their own, so
        // go on rather than make the client unusable.
        let guard = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        HELD.with(|h| {
            let (mut held, n) = h.get();
            held[n] = me;
            h.set((held, n + 1));
        });
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
        self.last_error
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// The counters, without waiting for a send in progress.
    pub fn stats(&self) -> StatsSnapshot {
        self.stats.snapshot()
    }

    /// The configuration the client was built from.
    pub fn config(&self) -> &Config {
        &self.cfg
    }

    fn sync_spool_stats(&self, inner: &Inner) {
        if let Some(sp) = &inner.spool {
            let s = sp.stats();
            self.stats.spool_chunks.store(s.chunks as u64, Relaxed);
            self.stats.spool_bytes.store(s.bytes, Relaxed);
            self.stats.chunks_corrupt.store(s.corrupt_chunks, Relaxed);
            self.stats.chunks_dropped.store(s.dropped_chunks, Relaxed);
            self.stats.records_dropped.store(s.dropped_records, Relaxed);
            self.stats.bytes_dropped.store(s.dropped_bytes, Relaxed);
            self.stats.spool_io_errors.store(s.io_errors, Relaxed);
            self.stats.chunks_locked.store(s.locked_chunks, Relaxed);
        }
    }

    /// Adds a destination and allocates its batch buffer. Returns its id, used by `append`.
    pub fn add_destination(
        &self,
        database: &str,
        table: &str,
        format: &str,
        mapping: Option<&str>,
    ) -> Result<u32, Error> {
        // An empty database name takes the connection string's Initial Catalog.
        let from_cs = self
            .cfg
            .auth
            .connection_string()
            .and_then(|c| c.database.clone());
        let database = match (database, &from_cs) {
            ("", Some(db)) => db.as_str(),
            _ => database,
        };
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
                format!(
                    "this client already has destinations.max={} destinations",
                    self.cfg.max_destinations
                ),
            ));
        }
        let key = DestKey {
            database: database.to_owned(),
            table: table.to_owned(),
            format: format.wire_name().to_owned(),
            mapping: mapping.map(str::to_owned),
        };
        let id = inner.destinations.len() as u32;
        let target = self.target_for(inner, &key)?;
        if let Some(other) = inner.targets[target].destination {
            return Err(Error::new(
                ErrorKind::InvalidArgument,
                format!(
                    "{} with this format and mapping is destination {other} already",
                    inner.targets[target].label
                ),
            ));
        }
        inner.targets[target].destination = Some(id);
        inner.destinations.push(Destination {
            target,
            format,
            batch: Batch::with_capacity(self.cfg.batch_bytes),
        });
        self.stats
            .destinations
            .store(inner.destinations.len() as u64, Relaxed);
        Ok(id)
    }

    /// The target for a key, made on first use (destinations, or spooled chunks of an earlier run).
    fn target_for(&self, inner: &mut Inner, key: &DestKey) -> Result<usize, Error> {
        if let Some(i) = inner.targets.iter().position(|t| *t.key == *key) {
            return Ok(i);
        }
        let format = Format::parse(&key.format)?;
        inner.targets.push(Target {
            url: wire::ingest_url(
                &self.cluster,
                &key.database,
                &key.table,
                format,
                key.mapping.as_deref(),
            ),
            label: format!("{}.{}", key.database, key.table),
            key: Arc::new(key.clone()),
            destination: None,
            failures: 0,
            not_before: None,
            last_failure: None,
        });
        Ok(inner.targets.len() - 1)
    }

    /// Refuses a record length that can never fit a batch, from the length alone: the C API calls it before it
    /// reads the caller's bytes, so a wrapped or garbage `record_len` is an error, never an over-read.
    pub fn check_record_len(&self, len: usize) -> Result<(), Error> {
        // A record framed with its newline must fit `batch.bytes`; the exact check follows in `append`.
        if len > self.cfg.batch_bytes {
            return Err(Error::new(
                ErrorKind::RecordTooLarge,
                format!(
                    "record of {len} bytes does not fit a batch of {} bytes: raise batch.bytes (at most 4194304) or split the record",
                    self.cfg.batch_bytes
                ),
            ));
        }
        Ok(())
    }

    /// Buffers one record. When it does not fit, the batch is sent first (or, while its target backs off, written
    /// to the spool). If the batch can go neither to the service nor to the spool, the record is not taken (the
    /// caller keeps it) and the error says why.
    pub fn append(&self, destination: u32, record: &[u8]) -> Result<(), Error> {
        let mut l = self.lock()?;
        let inner = &mut *l.guard;
        let d = inner
            .destinations
            .get(destination as usize)
            .ok_or_else(|| invalid_destination(destination))?;
        let format = d.format;
        validate_record(format, record, d.batch.capacity())?;
        if !d.batch.fits(format, record) {
            match self.send_batch(inner, destination as usize, None) {
                // Delivered, or safe on flash: either way the batch is free again.
                Ok(()) => {}
                Err(e) if e.kind == ErrorKind::Spooled || e.kind == ErrorKind::DataRejected => {}
                Err(e) => return Err(e),
            }
        }
        let d = &mut inner.destinations[destination as usize];
        if !d.batch.fits(format, record) {
            // Part of a refused batch is still waiting (its search for the refused records was cut short).
            return Err(Error::new(
                ErrorKind::TransientFailure,
                format!(
                    "{} records of this destination are still waiting to be sent; the record was not taken: call kedge_poll",
                    d.batch.records()
                ),
            ));
        }
        d.batch.push(format, record, Instant::now());
        self.stats.records_appended.fetch_add(1, Relaxed);
        self.stats
            .bytes_appended
            .fetch_add(record.len() as u64, Relaxed);
        self.stats.records_buffered.fetch_add(1, Relaxed);
        Ok(())
    }

    /// Sends every non-empty batch now and replays the spool. Targets that back off are not contacted (a service
    /// that throttles must not be hammered by a caller looping on flush): their batches go to the spool, or stay
    /// and give `BackingOff` without one. The call is bounded by `retry.max_total_ms` plus one request per
    /// target. Returns the first failure; `Spooled` means everything not delivered is durable on flash.
    pub fn flush(&self) -> Result<(), Error> {
        let mut l = self.lock()?;
        let inner = &mut *l.guard;
        let deadline = Instant::now() + self.cfg.retry_max_total;
        let mut first_err = None;
        for i in 0..inner.destinations.len() {
            if let Err(e) = self.send_batch(inner, i, Some(deadline)) {
                first_err.get_or_insert(e);
            }
        }
        if let Err(e) = self.replay(inner, deadline, u32::MAX) {
            first_err.get_or_insert(e);
        }
        if let Some(msg) = inner.spool_fault.take() {
            first_err.get_or_insert(Error::new(ErrorKind::SpoolIo, msg));
        }
        if first_err.is_none() {
            // Chunks of targets that back off were not tried: not delivered, but durable.
            if let Some(sp) = inner.spool.as_ref().filter(|sp| !sp.is_empty()) {
                first_err = Some(Error::new(
                    ErrorKind::Spooled,
                    format!("{} chunks wait in the spool for targets that are backing off; poll replays them", sp.len()),
                ));
            }
        }
        first_err.map_or(Ok(()), Err)
    }

    /// Writes every buffered batch to the spool without sending (before a planned power-off, say). Without a
    /// spool it does nothing and says so.
    pub fn flush_to_spool(&self) -> Result<(), Error> {
        let mut l = self.lock()?;
        let inner = &mut *l.guard;
        if inner.spool.is_none() {
            return Err(Error::new(
                ErrorKind::InvalidArgument,
                "no spool configured: set spool.dir",
            ));
        }
        let mut first_err = None;
        for i in 0..inner.destinations.len() {
            if inner.destinations[i].batch.is_empty() {
                continue;
            }
            if let Err(e) = self.spool_batch(inner, i, None) {
                first_err.get_or_insert(e);
            }
        }
        first_err.map_or(Ok(()), Err)
    }

    /// Periodic work for a firmware main loop: sends batches older than `batch.max_age_ms`, retries targets whose
    /// backoff ran out and replays up to `spool.replay_per_poll` spooled chunks. Returns the milliseconds until
    /// the next poll has something to do.
    pub fn poll(&self) -> Result<u32, Error> {
        let mut l = self.lock()?;
        let inner = &mut *l.guard;
        let deadline = Instant::now() + self.cfg.retry_max_total;
        let mut first_err = None;
        let has_spool = inner.spool.is_some();
        for i in 0..inner.destinations.len() {
            let now = Instant::now();
            let d = &inner.destinations[i];
            let backing_off = inner.targets[d.target].backing_off(now);
            let due = match d.batch.first_at() {
                None => false,
                // Without a spool there is nothing to do until the backoff ends.
                Some(_) if backing_off && !has_spool => false,
                Some(_) if d.batch.is_sealed() => true,
                Some(first) => now.duration_since(first) >= self.cfg.batch_max_age,
            };
            if due {
                if let Err(e) = self.send_batch(inner, i, Some(deadline)) {
                    first_err.get_or_insert(e);
                }
            }
        }
        if let Err(e) = self.replay(inner, deadline, self.cfg.replay_per_poll) {
            first_err.get_or_insert(e);
        }
        if let Some(msg) = inner.spool_fault.take() {
            first_err.get_or_insert(Error::new(ErrorKind::SpoolIo, msg));
        }
        let next = self.next_due(inner);
        first_err.map_or(Ok(next), Err)
    }

    fn next_due(&self, inner: &Inner) -> u32 {
        let now = Instant::now();
        let mut next = Duration::from_secs(3600);
        for d in &inner.destinations {
            let Some(first) = d.batch.first_at() else {
                continue;
            };
            let t = &inner.targets[d.target];
            let at = match t.not_before {
                Some(t) if t > now => t,
                _ if d.batch.is_sealed() => now,
                _ => first + self.cfg.batch_max_age,
            };
            next = next.min(at.saturating_duration_since(now));
        }
        if let Some(sp) = &inner.spool {
            for (_, info) in sp.pending() {
                let at = inner
                    .targets
                    .iter()
                    .find(|t| *t.key == *info.dest)
                    .and_then(|t| t.not_before)
                    .filter(|&t| t > now)
                    .unwrap_or(now);
                next = next.min(at.saturating_duration_since(now));
                if next.is_zero() {
                    break;
                }
            }
        }
        next.as_millis().min(u32::MAX as u128) as u32
    }

    fn random_u32(&self) -> u32 {
        let mut b = [0u8; 4];
        // A failed draw only makes the jitter less random.
        let _ = self.rng.fill(&mut b);
        u32::from_le_bytes(b)
    }

    /// Seals destination `i`'s batch (once: chunk id, compressed payload in `wire`).
    fn seal(&self, inner: &mut Inner, i: usize) -> Result<Chunk, Error> {
        let Inner {
            destinations,
            gzip,
            wire: wire_buf,
            ..
        } = inner;
        let d = &mut destinations[i];
        let id = match d.batch.chunk_id {
            Some(id) => id,
            None => {
                let id = wire::new_uuid(&self.rng)?;
                d.batch.chunk_id = Some(id);
                id
            }
        };
        let gz = !d.format.is_binary();
        if gz {
            gzip.compress(d.batch.bytes(), wire_buf)?;
        } else {
            // Already compressed formats go as they are; the copy keeps one path for sending and spooling.
            wire_buf.clear();
            wire_buf.extend_from_slice(d.batch.bytes());
        }
        Ok(Chunk {
            id,
            records: d.batch.records(),
            raw_len: d.batch.bytes().len() as u64,
            gzip: gz,
            seq: None,
        })
    }

    /// Writes destination `i`'s batch to the spool and frees the batch. `sealed`: the payload is in `wire` already.
    fn spool_batch(
        &self,
        inner: &mut Inner,
        i: usize,
        sealed: Option<Chunk>,
    ) -> Result<Chunk, Error> {
        let chunk = match sealed {
            Some(c) => c,
            None => self.seal(inner, i)?,
        };
        let target = inner.destinations[i].target;
        let chunk = self.spool_push(inner, target, chunk)?;
        let d = &mut inner.destinations[i];
        d.batch.clear();
        self.stats
            .records_buffered
            .fetch_sub(chunk.records, Relaxed);
        Ok(chunk)
    }

    /// Writes destination `i`'s batch to the spool and reports it spooled (`why` in the report, `msg` as its
    /// message): the error the call then returns, `Spooled`, or why the batch could not be spooled.
    fn spool_reported(
        &self,
        inner: &mut Inner,
        i: usize,
        sealed: Option<Chunk>,
        why: ErrorKind,
        msg: String,
    ) -> Error {
        match self.spool_batch(inner, i, sealed) {
            Ok(chunk) => {
                let t = &inner.targets[inner.destinations[i].target];
                self.report_chunk(t, &chunk, Outcome::Spooled, Some(why), 0, &msg);
                Error::new(ErrorKind::Spooled, msg)
            }
            Err(e) => e,
        }
    }

    /// Pushes the chunk in `wire` to the spool, accounting for what the capacity policy dropped.
    fn spool_push(
        &self,
        inner: &mut Inner,
        target: usize,
        mut chunk: Chunk,
    ) -> Result<Chunk, Error> {
        let Inner {
            targets,
            wire: wire_buf,
            spool,
            ..
        } = inner;
        let Some(sp) = spool.as_mut() else {
            return Err(Error::new(ErrorKind::Internal, "no spool"));
        };
        let t = &targets[target];
        let header = ChunkHeader {
            chunk_id: chunk.id,
            dest: (*t.key).clone(),
            created_unix_ms: now_unix_ms(),
            raw_len: chunk.raw_len as u32,
            records: chunk.records as u32,
            gzip: chunk.gzip,
        };
        let result = sp.push(&header, wire_buf);
        let label = t.label.clone();
        match result {
            Ok(dropped) => {
                // Sequence numbers only grow: the chunk just pushed is the newest.
                chunk.seq = sp.pending().last().map(|(seq, _)| seq);
                self.stats.chunks_spooled.fetch_add(1, Relaxed);
                self.stats.records_spooled.fetch_add(chunk.records, Relaxed);
                self.stats
                    .bytes_spooled
                    .fetch_add(wire_buf.len() as u64, Relaxed);
                if dropped.chunks > 0 {
                    let msg = format!(
                        "spool full: dropped the {} oldest chunks ({} records, {} bytes) to make room (spool.policy=drop-oldest)",
                        dropped.chunks, dropped.records, dropped.bytes
                    );
                    self.log(LogLevel::Warn, &msg);
                    self.report(
                        u32::MAX,
                        "",
                        dropped.records,
                        0,
                        dropped.bytes,
                        Outcome::Dropped,
                        Some(ErrorKind::SpoolFull),
                        0,
                        &msg,
                    );
                }
                self.sync_spool_stats(inner);
                Ok(chunk)
            }
            Err(e) => {
                let e = spool_error(e);
                self.log(
                    LogLevel::Error,
                    &format!(
                        "{label}: chunk of {} records could not be spooled: {}",
                        chunk.records, e.message
                    ),
                );
                Err(Error::new(
                    e.kind,
                    format!(
                        "{label}: {} (the batch stays in RAM; the record was not taken)",
                        e.message
                    ),
                ))
            }
        }
    }

    /// Sends destination `i`'s batch. On success the batch is empty; on a permanent refusal it is dropped (and
    /// reported); otherwise the target backs off and the chunk goes to the spool (`Err(Spooled)`) or, without
    /// one, stays sealed in RAM.
    fn send_batch(
        &self,
        inner: &mut Inner,
        i: usize,
        deadline: Option<Instant>,
    ) -> Result<(), Error> {
        let started = Instant::now();
        let deadline = deadline.unwrap_or(started + self.cfg.retry_max_total);
        let d = &inner.destinations[i];
        if d.batch.is_empty() {
            return Ok(());
        }
        let target = d.target;
        let t = &inner.targets[target];
        let has_spool = inner.spool.is_some();
        let skip = t.backing_off(started) || started >= deadline;
        if skip {
            if has_spool {
                // Backing off: the new batch does not wait out its own retries, it goes behind the backlog.
                let msg = format!("{}: backing off, chunk spooled for replay", t.label);
                return Err(self.spool_reported(inner, i, None, ErrorKind::Spooled, msg));
            }
            let wait = t
                .not_before
                .map_or(Duration::ZERO, |n| n.saturating_duration_since(started));
            let why = t
                .last_failure
                .as_ref()
                .map_or(String::new(), |f| format!(" after: {}", f.message));
            return Err(Error::new(
                ErrorKind::BackingOff,
                format!(
                    "{} is backing off for {} ms more{why}; its batch of {} records is kept and the record was not taken",
                    t.label,
                    wait.as_millis(),
                    d.batch.records()
                ),
            ));
        }
        let mut chunk = self.seal(inner, i)?;
        if self.cfg.spool_write_ahead && has_spool {
            chunk = self.spool_batch(inner, i, Some(chunk))?;
        }
        let attempts_before = inner.destinations[i].batch.attempts;
        let (sent, attempts) = self.deliver(
            inner,
            target,
            &chunk,
            attempts_before,
            self.cfg.retry_max_attempts,
            deadline,
        );
        if chunk.seq.is_none() {
            inner.destinations[i].batch.attempts = attempts;
        }
        match sent {
            Sent::Acknowledged => {
                if chunk.seq.is_none() {
                    inner.destinations[i].batch.clear();
                    self.stats
                        .records_buffered
                        .fetch_sub(chunk.records, Relaxed);
                }
                self.settle(inner, target, &chunk, None, 200)?;
                Ok(())
            }
            Sent::Failed(f)
                if f.class == FailureClass::Rejected
                    && chunk.seq.is_none()
                    && chunk.records > 1
                    && boundaries_match(&inner.destinations[i]) =>
            {
                self.isolate_rejected(inner, i, target, &f, deadline)
            }
            Sent::Failed(f) => {
                let class = f.class;
                let e = self.settle(inner, target, &chunk, Some(f), 0);
                if chunk.seq.is_some() && class != FailureClass::Rejected {
                    // Written ahead: it is on flash already and will be replayed.
                    let err = e.err().unwrap_or_else(|| {
                        Error::new(ErrorKind::TransientFailure, "not delivered")
                    });
                    let msg = format!("{}; kept in the spool for replay", err.message);
                    self.report_chunk(
                        &inner.targets[target],
                        &chunk,
                        Outcome::Spooled,
                        Some(err.kind),
                        0,
                        &msg,
                    );
                    return Err(Error::new(ErrorKind::Spooled, msg));
                }
                if class == FailureClass::Rejected && chunk.seq.is_none() {
                    inner.destinations[i].batch.clear();
                    self.stats
                        .records_buffered
                        .fetch_sub(chunk.records, Relaxed);
                    return e;
                }
                if class != FailureClass::Rejected && chunk.seq.is_none() && inner.spool.is_some() {
                    let err = e.err().unwrap_or_else(|| {
                        Error::new(ErrorKind::TransientFailure, "not delivered")
                    });
                    let msg = format!("{}; spooled for replay", err.message);
                    return Err(self.spool_reported(inner, i, Some(chunk), err.kind, msg));
                }
                if class != FailureClass::Rejected && chunk.seq.is_none() {
                    let t = &inner.targets[target];
                    let err = e.as_ref().err().cloned().unwrap_or_else(|| {
                        Error::new(ErrorKind::TransientFailure, "not delivered")
                    });
                    self.report_chunk(t, &chunk, Outcome::Failed, Some(err.kind), 0, &err.message);
                }
                e
            }
        }
    }

    /// The service refused destination `i`'s batch of several records as bad data. Rather than drop every record
    /// for the few that are bad, send it in halves, and the refused halves in halves again (at most
    /// [`MAX_SPLIT_DEPTH`] levels and [`MAX_ISOLATION_SENDS`] requests), so that only the refused records are
    /// rejected and the rest is delivered.
    /// Each piece is a chunk of its own, with its own id and delivery report. If a piece fails for another reason
    /// (or the call's time runs out), what is not settled yet stays as the batch, whole records in their order,
    /// and takes the usual way of a failed batch (backoff, the spool).
    fn isolate_rejected(
        &self,
        inner: &mut Inner,
        i: usize,
        target: usize,
        first: &Failure,
        deadline: Instant,
    ) -> Result<(), Error> {
        let format = inner.destinations[i].format;
        let total = inner.destinations[i].batch.records();
        let whole = inner.destinations[i].batch.bytes().len();
        self.log(
            LogLevel::Warn,
            &format!(
                "{}: the service refused a chunk of {total} records ({}): sending it in halves to find the refused records",
                inner.targets[target].label,
                describe(first)
            ),
        );
        // Ranges still to send, the next on top; a piece splits into two, so the depth bounds the stack.
        let mut todo: heapless::Vec<(usize, usize, u32), { MAX_SPLIT_DEPTH as usize + 2 }> =
            heapless::Vec::new();
        let _ = todo.push((0, whole, 0));
        let mut settled = 0u64;
        let mut first_err: Option<Error> = None;
        let mut pending: Option<(usize, usize)> = None;
        let mut sends = 0u32;
        while let Some((a, b, depth)) = todo.pop() {
            let (records, mid) = crate::batch::records_and_middle(
                format,
                &inner.destinations[i].batch.bytes()[a..b],
            );
            if depth == 0 {
                // The whole batch was refused already: start with its halves.
                if let Some(m) = mid {
                    let _ = todo.push((a + m, b, 1));
                    let _ = todo.push((a, a + m, 1));
                    continue;
                }
            }
            if Instant::now() >= deadline {
                pending = Some((a, b));
                break;
            }
            let sealed = wire::new_uuid(&self.rng).and_then(|id| {
                let Inner {
                    destinations,
                    gzip,
                    wire: wire_buf,
                    ..
                } = &mut *inner;
                gzip.compress(&destinations[i].batch.bytes()[a..b], wire_buf)?;
                Ok(id)
            });
            let id = match sealed {
                Ok(id) => id,
                Err(e) => {
                    self.keep_unsettled(inner, i, (a, b), &todo, total.saturating_sub(settled));
                    return Err(e);
                }
            };
            let piece = Chunk {
                id,
                records,
                raw_len: (b - a) as u64,
                gzip: true,
                seq: None,
            };
            sends += 1;
            let (sent, _) = self.deliver(
                inner,
                target,
                &piece,
                0,
                self.cfg.retry_max_attempts,
                deadline,
            );
            match sent {
                Sent::Acknowledged => {
                    self.settle(inner, target, &piece, None, 200)?;
                    settled += records;
                }
                Sent::Failed(f) if f.class == FailureClass::Rejected => match mid {
                    Some(m) if depth < MAX_SPLIT_DEPTH && sends < MAX_ISOLATION_SENDS => {
                        let _ = todo.push((a + m, b, depth + 1));
                        let _ = todo.push((a, a + m, depth + 1));
                    }
                    _ => {
                        if let Err(e) = self.settle(inner, target, &piece, Some(f), 0) {
                            first_err.get_or_insert(e);
                        }
                        settled += records;
                    }
                },
                Sent::Failed(f) => {
                    // Not the data this time: keep what is left and let the usual failure path take it.
                    let e = self.settle(inner, target, &piece, Some(f), 0);
                    self.keep_unsettled(inner, i, (a, b), &todo, total.saturating_sub(settled));
                    if inner.spool.is_some() {
                        let why = e.err().map_or(String::new(), |e| e.message);
                        let msg =
                            format!("{why}; the rest of a refused chunk was spooled for replay");
                        return Err(self.spool_reported(inner, i, None, ErrorKind::Spooled, msg));
                    }
                    return e;
                }
            }
        }
        if let Some(range) = pending {
            self.keep_unsettled(inner, i, range, &todo, total.saturating_sub(settled));
            // Records are still in the batch: a keep-the-data answer, whatever was rejected on the way.
            return Err(Error::new(
                ErrorKind::TransientFailure,
                format!(
                    "{}: time ran out while finding the refused records of a chunk; the rest is kept and sent by the next poll",
                    inner.targets[target].label
                ),
            ));
        }
        inner.destinations[i].batch.clear();
        self.stats.records_buffered.fetch_sub(total, Relaxed);
        first_err.map_or(Ok(()), Err)
    }

    /// Leaves in destination `i`'s batch only the records not settled yet: `current` and the ranges in `todo`
    /// (a stack: its bottom holds the last ranges of the batch), `left` records in all.
    fn keep_unsettled(
        &self,
        inner: &mut Inner,
        i: usize,
        current: (usize, usize),
        todo: &[(usize, usize, u32)],
        left: u64,
    ) {
        let mut ranges: heapless::Vec<(usize, usize), { MAX_SPLIT_DEPTH as usize + 3 }> =
            heapless::Vec::new();
        let _ = ranges.push(current);
        for &(a, b, _) in todo.iter().rev() {
            let _ = ranges.push((a, b));
        }
        let batch = &mut inner.destinations[i].batch;
        let before = batch.records();
        batch.retain_ranges(&ranges, left);
        self.stats
            .records_buffered
            .fetch_sub(before.saturating_sub(left), Relaxed);
    }

    /// Replays spooled chunks, oldest first, skipping targets that back off, up to `max` chunks and the deadline.
    /// Each chunk gets one attempt per call: the backoff between attempts is the poll schedule.
    fn replay(&self, inner: &mut Inner, deadline: Instant, max: u32) -> Result<(), Error> {
        let mut first_err = None;
        let mut done = 0;
        while done < max && Instant::now() < deadline {
            let now = Instant::now();
            let next = {
                let Some(sp) = inner.spool.as_ref() else {
                    return Ok(());
                };
                let targets = &inner.targets;
                sp.pending()
                    .find(|(_, info)| {
                        !targets
                            .iter()
                            .any(|t| *t.key == *info.dest && t.backing_off(now))
                    })
                    .map(|(seq, info)| (seq, (*info.dest).clone()))
            };
            let Some((seq, key)) = next else { break };
            done += 1;
            let target = match self.target_for(inner, &key) {
                Ok(t) => t,
                Err(e) => {
                    // A format this version cannot name: the chunk can never be sent.
                    if let Some(sp) = inner.spool.as_mut() {
                        let _ = sp.reject(seq, &e.message);
                    }
                    continue;
                }
            };
            let read = {
                let Inner {
                    spool,
                    wire: wire_buf,
                    ..
                } = &mut *inner;
                let sp = spool.as_mut().expect("checked above");
                let cap = wire_buf.capacity();
                wire_buf.clear();
                wire_buf.resize(cap, 0);
                let r = sp.read(seq, wire_buf.as_mut_slice());
                let n = r.as_ref().map_or(0, |(_, n)| *n);
                wire_buf.truncate(n);
                r
            };
            let header = match read {
                Ok((h, _)) => h,
                Err(SpoolError::Corrupt(why)) => {
                    self.log(LogLevel::Error, &format!("spooled chunk {seq:016x} is corrupt and was quarantined in corrupt/: {why}"));
                    self.sync_spool_stats(inner);
                    continue;
                }
                Err(SpoolError::BufferTooSmall { needed }) => {
                    let t = &mut inner.targets[target];
                    t.not_before = Some(now + self.cfg.backoff_max);
                    let e = Error::new(
                        ErrorKind::SpoolIo,
                        format!("{}: spooled chunk needs {needed} bytes, more than this client's buffer: raise batch.bytes to what the earlier run used", t.label),
                    );
                    self.log(LogLevel::Error, &e.message);
                    first_err.get_or_insert(e);
                    continue;
                }
                Err(e) => {
                    let e = spool_error(e);
                    self.log(
                        LogLevel::Error,
                        &format!("spool read failed: {}", e.message),
                    );
                    first_err.get_or_insert(e);
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
            let attempt = self.replay_attempt.fetch_add(1, Relaxed);
            let (sent, _) = self.deliver(inner, target, &chunk, attempt, 1, deadline);
            let r = match sent {
                Sent::Acknowledged => {
                    self.stats.chunks_replayed.fetch_add(1, Relaxed);
                    self.stats
                        .records_replayed
                        .fetch_add(chunk.records, Relaxed);
                    self.settle(inner, target, &chunk, None, 200)
                }
                Sent::Failed(f) => self.settle(inner, target, &chunk, Some(f), 0),
            };
            if let Err(e) = r {
                first_err.get_or_insert(e);
            }
        }
        first_err.map_or(Ok(()), Err)
    }

    /// Sends the chunk in `wire` to a target, retrying transient failures in this call up to `max_attempts` and
    /// the deadline. Returns the outcome and the chunk's attempt count after it.
    fn deliver(
        &self,
        inner: &mut Inner,
        target: usize,
        chunk: &Chunk,
        mut attempt: u32,
        max_attempts: u32,
        deadline: Instant,
    ) -> (Sent, u32) {
        let Inner {
            targets,
            wire: payload,
            body,
            scratch,
            ..
        } = inner;
        let t = &targets[target];
        let chunk_text = wire::uuid_text(&chunk.id);
        let mut in_call = 0u32;
        let mut force_refresh = false;
        let mut refreshed_after_401 = false;
        loop {
            let token = match self.bearer(force_refresh) {
                Ok(t) => t,
                Err(f) => return (Sent::Failed(f), attempt),
            };
            force_refresh = false;
            let request_id = wire::request_id(&chunk_text, attempt);
            let mut headers: heapless::Vec<(&'static str, &str), 10> = heapless::Vec::new();
            let _ = headers.push(("x-ms-client-request-id", &request_id));
            let _ = headers.push(("x-ms-version", wire::API_VERSION));
            let _ = headers.push(("x-ms-app", &self.cfg.app));
            let _ = headers.push(("x-ms-user", &self.cfg.user));
            let _ = headers.push(("x-ms-client-version", &self.client_version));
            let _ = headers.push(("Accept", "application/json"));
            if chunk.gzip {
                let _ = headers.push(("Content-Encoding", "gzip"));
            }
            if let Some(tok) = &token {
                let _ = headers.push(("Authorization", tok.expose()));
            }
            if attempt > 0 {
                self.stats.retries.fetch_add(1, Relaxed);
            }
            attempt = attempt.saturating_add(1);
            in_call += 1;
            self.stats.requests.fetch_add(1, Relaxed);
            self.stats.records_sent.fetch_add(chunk.records, Relaxed);
            self.stats.bytes_sent_raw.fetch_add(chunk.raw_len, Relaxed);
            self.stats
                .bytes_sent_wire
                .fetch_add(payload.len() as u64, Relaxed);
            let reply = match self.transport.post(&t.url, &headers, payload, body) {
                Ok(r) => {
                    self.stats.last_http_status.store(r.status as u64, Relaxed);
                    classify(
                        r.status,
                        r.retry_after.as_deref(),
                        &body[..r.body_len],
                        SystemTime::now(),
                        scratch,
                    )
                }
                Err(f) => {
                    self.stats.last_http_status.store(0, Relaxed);
                    Reply::Failed(f)
                }
            };
            let f = match reply {
                Reply::Acknowledged { consumed } => {
                    if let Some(c) = consumed.filter(|&c| c != chunk.records) {
                        self.log(
                            LogLevel::Warn,
                            &format!("{}: chunk {chunk_text} of {} records acknowledged with ConsumedRecordsCount={c}", t.label, chunk.records),
                        );
                    }
                    return (Sent::Acknowledged, attempt);
                }
                Reply::Failed(f) => f,
            };
            self.stats.failures.fetch_add(1, Relaxed);
            // An expired or revoked token: one fresh token and one more try, at once.
            let can_refresh = self.auth.as_ref().is_some_and(|a| a.can_refresh());
            if f.status == 401 && can_refresh && !refreshed_after_401 {
                refreshed_after_401 = true;
                force_refresh = true;
                self.log(
                    LogLevel::Warn,
                    &format!("{}: 401 from the service; fetching a new token", t.label),
                );
                continue;
            }
            if f.class == FailureClass::Transient && in_call < max_attempts {
                let delay = Backoff {
                    base: self.cfg.retry_base,
                    max: self.cfg.retry_max_delay,
                    retry_after_cap: self.cfg.backoff_max,
                }
                .delay(in_call, self.random_u32(), f.retry_after);
                if Instant::now() + delay < deadline {
                    self.log(
                        LogLevel::Warn,
                        &format!(
                            "{}: attempt {in_call} failed ({}); retrying in {} ms",
                            t.label,
                            describe(&f),
                            delay.as_millis()
                        ),
                    );
                    std::thread::sleep(delay);
                    continue;
                }
            }
            return (Sent::Failed(f), attempt);
        }
    }

    /// The `Authorization` value for the next request, from the token cache (refreshed ahead of expiry, or now
    /// after a 401). Built inside a zeroed-on-drop string so no copy of the token lingers in freed memory.
    // A failure is a fixed-size value on purpose: handling one must not allocate.
    #[allow(clippy::result_large_err)]
    fn bearer(&self, force_refresh: bool) -> Result<Option<SecretString>, Failure> {
        let Some(cache) = &self.auth else {
            return Ok(None);
        };
        let token = cache
            .get(self.transport.agent(), force_refresh)
            .map_err(|e| {
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
        if let Some(w) = cache.take_warning() {
            self.log(
                LogLevel::Warn,
                &format!(
                    "token refresh failed, the current token is still valid: {}",
                    w.message
                ),
            );
        }
        let mut header = SecretString::new(String::with_capacity(7 + token.expose().len()));
        header.push_str("Bearer ");
        header.push_str(token.expose());
        Ok(Some(header))
    }

    /// Books the outcome of a delivery: stats, spool bookkeeping, the target's backoff, the report. Returns the
    /// error to give the caller for a failure.
    fn settle(
        &self,
        inner: &mut Inner,
        target: usize,
        chunk: &Chunk,
        failure: Option<Failure>,
        status: u16,
    ) -> Result<(), Error> {
        let chunk_text = wire::uuid_text(&chunk.id);
        let wire_len = inner.wire.len() as u64;
        let Some(failure) = failure else {
            if let (Some(seq), Some(sp)) = (chunk.seq, inner.spool.as_mut()) {
                if let Err(e) = sp.remove(seq) {
                    // Delivered already, and forgotten by the spool whatever the flash did, so it is not sent
                    // again in this run; the worst case is one duplicate after a restart (at-least-once).
                    let msg = format!("acknowledged chunk {chunk_text} could not be removed from the spool: {e}; it counts as delivered and may be sent once more after a restart");
                    self.log(LogLevel::Error, &msg);
                    inner.spool_fault.get_or_insert(msg);
                }
                self.sync_spool_stats(inner);
            }
            let t = &mut inner.targets[target];
            t.failures = 0;
            t.not_before = None;
            t.last_failure = None;
            self.stats
                .records_acknowledged
                .fetch_add(chunk.records, Relaxed);
            self.stats.chunks_acknowledged.fetch_add(1, Relaxed);
            let t = &inner.targets[target];
            self.log(
                LogLevel::Info,
                &format!("{}: chunk {chunk_text} acknowledged: {} records, {} bytes raw, {wire_len} on the wire", t.label, chunk.records, chunk.raw_len),
            );
            self.report_chunk(
                t,
                chunk,
                Outcome::Acknowledged,
                None,
                status,
                "acknowledged",
            );
            return Ok(());
        };
        let kind = match failure.class {
            FailureClass::Transient => ErrorKind::TransientFailure,
            FailureClass::Rejected => ErrorKind::DataRejected,
            FailureClass::TargetNotReady => ErrorKind::TargetNotReady,
            FailureClass::Auth => ErrorKind::AuthRefused,
        };
        let label = inner.targets[target].label.clone();
        let message = format!("{label}: {}: {}", describe(&failure), failure.advice());
        if failure.class == FailureClass::Rejected {
            let fate = match (chunk.seq, inner.spool.as_mut()) {
                (Some(seq), Some(sp)) => match sp.reject(seq, &message) {
                    Ok(()) => "moved to the spool's rejected/".to_owned(),
                    Err(e) => {
                        let fate = format!("could not be moved to rejected/ ({e}); it is not sent again in this run");
                        inner
                            .spool_fault
                            .get_or_insert(format!("chunk {chunk_text} {fate}"));
                        fate
                    }
                },
                _ => "dropped".to_owned(),
            };
            self.sync_spool_stats(inner);
            self.log(
                LogLevel::Error,
                &format!(
                    "chunk {chunk_text} ({} records) {fate}: {message}",
                    chunk.records
                ),
            );
            self.stats
                .records_rejected
                .fetch_add(chunk.records, Relaxed);
            self.stats.chunks_rejected.fetch_add(1, Relaxed);
            let t = &mut inner.targets[target];
            // The target itself is fine: no backoff for the next chunk.
            t.failures = 0;
            t.not_before = None;
            let t = &inner.targets[target];
            self.report_chunk(
                t,
                chunk,
                Outcome::Rejected,
                Some(kind),
                failure.status,
                &message,
            );
            return Err(Error::new(kind, message));
        }
        // Keep the chunk and back off: exponentially per consecutive failure, longer for problems an operator
        // must fix, never shorter than the server asked.
        let t = &mut inner.targets[target];
        t.failures = t.failures.saturating_add(1);
        let base = match failure.class {
            FailureClass::Transient => self.cfg.retry_base.max(Duration::from_millis(100)),
            _ => Duration::from_secs(5),
        };
        let wait = Backoff {
            base: base * 2,
            max: self.cfg.backoff_max,
            retry_after_cap: self.cfg.backoff_max,
        }
        .delay(t.failures, self.random_u32(), failure.retry_after);
        t.not_before = Some(Instant::now() + wait);
        t.last_failure = Some(failure);
        let place = if chunk.seq.is_some() {
            "kept in the spool"
        } else {
            "kept"
        };
        self.log(
            LogLevel::Error,
            &format!("chunk {chunk_text} ({} records) not delivered, {place}: {message}; next try in {} ms", chunk.records, wait.as_millis()),
        );
        Err(Error::new(kind, message))
    }

    fn report_chunk(
        &self,
        t: &Target,
        chunk: &Chunk,
        outcome: Outcome,
        error: Option<ErrorKind>,
        status: u16,
        message: &str,
    ) {
        let text = wire::uuid_text(&chunk.id);
        self.report(
            t.destination.unwrap_or(u32::MAX),
            &text,
            chunk.records,
            chunk.raw_len,
            0,
            outcome,
            error,
            status,
            message,
        );
    }

    #[allow(clippy::too_many_arguments)]
    fn report(
        &self,
        destination: u32,
        chunk_id: &str,
        records: u64,
        raw: u64,
        wire: u64,
        outcome: Outcome,
        error: Option<ErrorKind>,
        status: u16,
        message: &str,
    ) {
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
        // Batches still in RAM go to flash when there is a spool: closing the client loses nothing.
        let has_spool = self
            .inner
            .get_mut()
            .map(|i| i.spool.is_some())
            .unwrap_or(false);
        if has_spool {
            let _ = self.flush_to_spool();
        }
        let buffered = self.stats.records_buffered.load(Relaxed);
        if buffered > 0 {
            self.log(
                LogLevel::Warn,
                &format!("client freed with {buffered} records not delivered: call kedge_flush before kedge_client_free"),
            );
        }
    }
}

/// Whether the batch can be cut at the places its format's parser sees between records, and each place is where
/// one appended record ended: true unless a record holds what reads as several (a multijson record of values on
/// separate lines, a CSV record with a bare newline or an unbalanced quote). Isolating refused records relies on
/// it, so that the counts of every piece are exact.
fn boundaries_match(d: &Destination) -> bool {
    !d.format.one_record_per_request()
        && crate::batch::records_and_middle(d.format, d.batch.bytes()).0 == d.batch.records()
}

fn invalid_destination(id: u32) -> Error {
    Error::new(
        ErrorKind::InvalidDestination,
        format!("destination {id} does not exist: use an id from kedge_client_add_destination"),
    )
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
