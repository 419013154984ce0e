//! The ingest client, in the librdkafka shape: `append` only enqueues, `poll` and `flush` do the work.
//!
//! - [`lane`]: one lane per destination, with its own lock, its filling batch and up to `batch.sealed` sealed
//!   chunks. `append` touches nothing else.
//! - [`send`]: the sender takes chunks out of lanes and sends them through the sink, with no lane lock held.
//! - [`replay`]: spooled chunks, oldest first.
//! - [`outcome`]: what follows a send, as a pure table; [`engine`] carries it out (spool, backoff, reports).
//! - [`gate`]: one sending thread per client at a time.
//! - [`recovery`]: opening the spool at start and saying what it found; [`admin`]: spool administration.
//! - The protocol itself is a [`crate::sink::Sink`]; streaming ingestion is the first.
//!
//! # Thread rules
//!
//! A `Client` is `Send + Sync`; every function may be called from any thread.
//! - `append`, `add_destination`, `stats`, `last_error` never wait for the network, the flash or a send in
//!   progress: `append` holds its own lane's lock for one record's copy (and, when the batch is full, a pointer
//!   swap), `add_destination` a lock only other adds take.
//! - `poll`, `flush`, `flush_to_spool` and dropping the client send or write flash; one thread at a time does
//!   so. `poll` never waits for another thread's send: it returns at once (nothing done, the next poll in
//!   [`BUSY_RETRY_MS`]). `flush` waits for it, within its timeout. Drop waits as long as it takes.
//! - Each sending call is bounded: `poll` and `flush` by `retry.max_total_ms` (or the flush's timeout) plus one
//!   request's timeouts and the spool writes of what was not sent.
//! - Callbacks (log, delivery) run on the thread that sends, inside `poll`/`flush`/drop, with no lane lock held:
//!   they may call `append`, `add_destination` and `stats`; `poll`, `flush` and `flush_to_spool` from inside a
//!   callback return `ReentrantCall`.
//!
//! Delivery order, with a spool: chunks of one destination leave the spool oldest first; fresh chunks are sent
//! as they seal, so while a backlog drains, fresh data may arrive before older spooled data (Kusto keeps no order
//! among ingested chunks anyway; records carry their own timestamps). While a destination backs off, its new
//! chunks go straight to the spool behind the older ones.

pub(crate) mod admin;
pub(crate) mod engine;
pub(crate) mod gate;
pub(crate) mod lane;
pub(crate) mod outcome;
pub(crate) mod recovery;
pub(crate) mod replay;
pub mod report;
pub(crate) mod send;
pub mod stats;

use std::sync::atomic::AtomicU64;
use std::sync::atomic::Ordering::{Acquire, Relaxed};
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use ring::rand::{SecureRandom, SystemRandom};

use crate::clock::SharedClock;
use crate::config::IngestMode;
use crate::config::{Config, LogLevel};
use crate::error::{Error, ErrorKind};
use crate::sink::managed::ManagedSink;
use crate::sink::queued::QueuedSink;
use crate::sink::streaming::StreamingSink;
use crate::sink::Sink;
use crate::spool::{DestKey, FsStorage};
use crate::transport::Transport;
use crate::wire::{self, Format};

pub use lane::LinesTaken;
pub use report::{DeliveryFn, DeliveryReport, LogFn, Outcome, SpoolStorage};
pub use stats::{Stats, StatsSnapshot};

use engine::{Engine, FirstError};
use gate::{Gate, Wait};
use lane::{Lane, Lanes};
use send::Mode;

// A full batch always fits a spool chunk.
const _: () = assert!(
    crate::gzip::compressed_bound(crate::config::MAX_REQUEST_RAW_BYTES)
        <= crate::spool::MAX_PAYLOAD_LEN
);

/// What `poll` says when another thread is sending: try again this many milliseconds later.
pub const BUSY_RETRY_MS: u32 = 100;

/// What every part of the client reads: configuration, clock, sink, callbacks, counters.
pub(crate) struct Shared {
    pub cfg: Config,
    pub clock: SharedClock,
    pub sink: Box<dyn Sink>,
    pub rng: SystemRandom,
    pub stats: Stats,
    /// Records the sender is done with (acknowledged, refused, spooled or dropped): `records_buffered` is what
    /// the lanes took minus this ([`Client::stats`]). Added with Release after the batch was taken.
    pub records_settled: AtomicU64,
    log: Option<LogFn>,
    delivery: Option<DeliveryFn>,
}

impl Shared {
    /// Passes a line to the log callback, if its level is enabled.
    pub fn log(&self, level: LogLevel, msg: &str) {
        if level <= self.cfg.log_level {
            if let Some(f) = &self.log {
                f(level, msg);
            }
        }
    }

    /// Passes a report to the delivery callback.
    pub fn report(&self, r: &DeliveryReport<'_>) {
        if let Some(f) = &self.delivery {
            f(r);
        }
    }

    /// A random draw for jitter.
    pub fn random_u32(&self) -> u32 {
        let mut b = [0u8; 4];
        // A failed draw only makes the jitter less random.
        let _ = self.rng.fill(&mut b);
        u32::from_le_bytes(b)
    }
}

/// How a client is built beyond its config (tests give another storage or clock).
#[derive(Default)]
pub struct ClientOptions {
    /// The spool's storage; `None`: a directory at `spool.dir`, if set.
    pub storage: Option<SpoolStorage>,
    /// The clock; `None`: the system's.
    pub clock: Option<SharedClock>,
    /// Log callback.
    pub log: Option<LogFn>,
    /// Delivery report callback.
    pub delivery: Option<DeliveryFn>,
}

/// An ingest client. See the module docs for the thread rules.
pub struct Client {
    sh: Shared,
    lanes: Lanes,
    gate: Gate,
    engine: Mutex<Engine>,
    last_error: Mutex<String>,
}

impl Client {
    /// Creates a client: validates the config, opens (and recovers) the spool if one is configured, and allocates
    /// the buffers it needs up front (batch buffers as destinations are added and batches fill, within
    /// [`Config::memory_bound`]).
    pub fn new(
        cfg: &Config,
        log: Option<LogFn>,
        delivery: Option<DeliveryFn>,
    ) -> Result<Client, Error> {
        Client::with_options(
            cfg,
            ClientOptions {
                log,
                delivery,
                ..ClientOptions::default()
            },
        )
    }

    /// Like [`Client::new`], with the spool on the given storage (tests use a fault-injecting one). Test machinery:
    /// only with the `testing` feature.
    #[cfg(any(test, feature = "testing"))]
    pub fn with_storage(
        cfg: &Config,
        storage: Option<SpoolStorage>,
        log: Option<LogFn>,
        delivery: Option<DeliveryFn>,
    ) -> Result<Client, Error> {
        // No storage given means no spool, even with spool.dir set.
        let mut cfg = cfg.clone();
        if storage.is_none() {
            cfg.spool_dir = None;
        }
        Client::with_options(
            &cfg,
            ClientOptions {
                storage,
                clock: None,
                log,
                delivery,
            },
        )
    }

    /// Creates a client with everything given.
    pub fn with_options(cfg: &Config, opts: ClientOptions) -> Result<Client, Error> {
        let cluster = cfg.validate()?;
        if !cfg.json_check
            && ((opts.storage.is_some() || cfg.spool_dir.is_some())
                || cfg.ingest_mode != IngestMode::Streaming)
        {
            // A refused chunk is sent in halves only from RAM by the streaming sink: a spooled chunk refused on
            // replay, or a queued blob the DM fails, would take every good record in it along with the bad one.
            return Err(Error::new(
                ErrorKind::ConfigInvalidValue,
                "json.check=false needs ingest.mode=streaming and no spool: a chunk refused on replay from the spool or by the DM is not split, so one bad record would cost its whole chunk",
            ));
        }
        let storage: Option<SpoolStorage> = match (opts.storage, &cfg.spool_dir) {
            (Some(s), _) => Some(s),
            (None, Some(dir)) => Some(Box::new(FsStorage::new(dir).map_err(|e| {
                Error::new(
                    ErrorKind::SpoolIo,
                    format!("spool directory '{}' cannot be used: {e}", dir.display()),
                )
            })?)),
            (None, None) => None,
        };
        let clock = opts.clock.unwrap_or_else(crate::clock::system);
        // One token cache for every sink: the DM takes the engine's token (same scope).
        let auth = cfg
            .auth
            .build(Some(&cluster.base()), cfg.retry_max_total, clock.clone())?
            .map(std::sync::Arc::new);
        let sink: Box<dyn Sink> = match cfg.ingest_mode {
            IngestMode::Streaming => {
                let transport = Transport::new(&cfg.transport_config(), &cluster)?;
                Box::new(StreamingSink::new(cfg, cluster, transport, auth))
            }
            IngestMode::Queued => {
                let dm = cfg.dm_url(&cluster)?;
                let transport = Transport::new(&cfg.transport_config(), &dm.as_host())?;
                Box::new(QueuedSink::new(cfg, dm, transport, auth, clock.now()))
            }
            IngestMode::Managed => {
                let dm = cfg.dm_url(&cluster)?;
                let engine = Transport::new(&cfg.transport_config(), &cluster)?;
                let storage = Transport::new(&cfg.transport_config(), &dm.as_host())?;
                let queued = QueuedSink::new(cfg, dm, storage, auth.clone(), clock.now());
                let streaming = StreamingSink::new(cfg, cluster, engine, auth);
                Box::new(ManagedSink::new(streaming, queued, cfg.managed_queued_for))
            }
        };
        let sh = Shared {
            cfg: cfg.clone(),
            clock,
            sink,
            rng: SystemRandom::new(),
            stats: Stats::default(),
            records_settled: AtomicU64::new(0),
            log: opts.log,
            delivery: opts.delivery,
        };
        // Replays after a reboot must not repeat the request ids of the previous run: start at a random attempt
        // number, far above those of fresh sends.
        let replay_base = 1000 + (sh.random_u32() >> 12);
        let mut engine = Engine::new(&sh, replay_base);
        if let Some(storage) = storage {
            engine.spool = Some(recovery::open_spool(&sh, storage)?);
            engine.sync_spool_stats(&sh);
        }
        Ok(Client {
            lanes: Lanes::new(cfg.max_destinations),
            gate: Gate::new(),
            engine: Mutex::new(engine),
            last_error: Mutex::new(String::new()),
            sh,
        })
    }

    fn engine(&self) -> MutexGuard<'_, Engine> {
        // Only the gate's holder locks it, so it is never contended; a panic in an earlier call poisoned it, but
        // every chunk is either in a lane, in the spool, or settled: go on.
        self.engine.lock().unwrap_or_else(|p| p.into_inner())
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
        // Settled first, then what the lanes took: a record is taken before it is settled, so this way round
        // `records_buffered` can be a moment high (a record settled between the two reads), never low: a
        // caller waiting for 0 never sees it early.
        let settled = self.sh.records_settled.load(Acquire);
        let mut s = self.sh.stats.snapshot();
        let (mut records, mut bytes) = (0, 0);
        for lane in self.lanes.iter() {
            let (r, b) = lane.appended();
            records += r;
            bytes += b;
        }
        s.records_appended = records;
        s.bytes_appended = bytes;
        s.records_buffered = records.saturating_sub(settled);
        s
    }

    /// The configuration the client was built from.
    pub fn config(&self) -> &Config {
        &self.sh.cfg
    }

    /// Adds a destination (a lane). Returns its id, used by `append`. Never waits for a send.
    pub fn add_destination(
        &self,
        database: &str,
        table: &str,
        format: &str,
        mapping: Option<&str>,
    ) -> Result<u32, Error> {
        // An empty database name takes the connection string's Initial Catalog.
        let from_cs = self
            .sh
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
        let key = DestKey {
            database: database.to_owned(),
            table: table.to_owned(),
            format: format.wire_name().to_owned(),
            mapping: mapping.map(str::to_owned),
        };
        let cfg = &self.sh.cfg;
        let id = self.lanes.add(
            |lanes| match lanes.find(&key) {
                Some(other) => Err(Error::new(
                    ErrorKind::InvalidArgument,
                    format!(
                        "{database}.{table} with this format and mapping is destination {} already",
                        other.id
                    ),
                )),
                None => Ok(()),
            },
            |id| {
                Lane::new(id, key.clone(), format, cfg.batch_bytes, cfg.batch_sealed)
                    .json_check(cfg.json_check)
            },
        )?;
        self.sh
            .stats
            .destinations
            .store(self.lanes.len() as u64, Relaxed);
        Ok(id)
    }

    /// Refuses a record length that can never fit a batch, from the length alone: the C API calls it before it
    /// reads the caller's bytes, so a wrapped or garbage `record_len` is an error, never an over-read.
    pub fn check_record_len(&self, len: usize) -> Result<(), Error> {
        // A record framed with its newline must fit `batch.bytes`; the exact check follows in `append`.
        if len > self.sh.cfg.batch_bytes {
            return Err(Error::new(
                ErrorKind::RecordTooLarge,
                format!(
                    "record of {len} bytes does not fit a batch of {} bytes: raise batch.bytes (at most 4194304) or split the record",
                    self.sh.cfg.batch_bytes
                ),
            ));
        }
        Ok(())
    }

    /// Takes one record into its destination's lane. Never sends, compresses, writes flash or waits for another
    /// destination: it validates the record (O(its length): UTF-8, and JSON syntax for json formats), copies it,
    /// and when the batch is full moves the batch aside for the sender. `QueueFull` when the lane has no room:
    /// the record was not taken; `poll` and append it again.
    pub fn append(&self, destination: u32, record: &[u8]) -> Result<(), Error> {
        let lane = self
            .lanes
            .get(destination)
            .ok_or_else(|| invalid_destination(destination))?;
        match lane.append(record, || self.sh.clock.now()) {
            Ok(_) => Ok(()),
            Err(e) => {
                if e.kind == ErrorKind::QueueFull {
                    self.sh.stats.appends_queue_full.fetch_add(1, Relaxed);
                }
                Err(e)
            }
        }
    }

    /// Takes the newline-ended records of `buf`, at most `max_records` of them, with one lane lock per group
    /// of records instead of one per record: what `append` does for each line, in one call. Each line is a
    /// record (for CSV-like formats a newline inside a quoted field belongs to its record; a `multijson` object
    /// cannot span lines here), a `\r` before the newline is dropped and empty lines are skipped. It stops
    /// before an incomplete last line (call again with it and more bytes, or `append` it at the end of the
    /// input), after `max_records` records, or at the first record not taken, whose error it returns with
    /// [`LinesTaken::consumed`] at that record's first byte: `QueueFull` (poll, then offer it again),
    /// `InvalidRecord` or `RecordTooLarge` (it never will be taken as it is). `InvalidArgument` for a format
    /// whose records are whole documents.
    pub fn append_lines(
        &self,
        destination: u32,
        buf: &[u8],
        max_records: u64,
    ) -> (LinesTaken, Result<(), Error>) {
        let Some(lane) = self.lanes.get(destination) else {
            return (LinesTaken::default(), Err(invalid_destination(destination)));
        };
        let (taken, r) = lane.append_lines(buf, max_records, || self.sh.clock.now());
        if r.as_ref().is_err_and(|e| e.kind == ErrorKind::QueueFull) {
            self.sh.stats.appends_queue_full.fetch_add(1, Relaxed);
        }
        (taken, r)
    }

    /// Periodic work for a main loop: sends sealed chunks and batches older than `batch.max_age_ms`, spools the
    /// chunks of destinations that back off, and replays up to `spool.replay_per_poll` spooled chunks. Returns
    /// the milliseconds until the next poll has something to do, and the call's first failure; the milliseconds
    /// come back whatever the result.
    pub fn poll_next(&self) -> (u32, Result<(), Error>) {
        let held = match self.gate.enter(Wait::No) {
            Ok(Some(h)) => h,
            // Another thread is sending: nothing to do here.
            Ok(None) => return (BUSY_RETRY_MS, Ok(())),
            Err(e) => return (BUSY_RETRY_MS, Err(e)),
        };
        let mut engine = self.engine();
        // A panic in an earlier call may have left these set.
        engine.spool_forced = false;
        engine.hard_deadline = None;
        let sh = &self.sh;
        let deadline = sh.clock.now() + sh.cfg.retry_max_total;
        let mut errs = FirstError::default();
        for lane in self.lanes.iter() {
            engine.service_lane(sh, &self.lanes, lane, Mode::Due, deadline, &mut errs);
        }
        engine.replay(sh, &self.lanes, deadline, sh.cfg.replay_per_poll, &mut errs);
        engine.track_status(sh, deadline);
        if let Some(msg) = engine.spool_fault.take() {
            errs.note(Error::new(ErrorKind::SpoolIo, msg));
        }
        let next = engine.next_due(sh, &self.lanes);
        drop(engine);
        drop(held);
        (next, errs.0.map_or(Ok(()), Err))
    }

    /// [`Client::poll_next`] with the milliseconds only on success.
    pub fn poll(&self) -> Result<u32, Error> {
        let (next, r) = self.poll_next();
        r.map(|()| next)
    }

    /// Sends every buffered batch now and replays the spool, within `retry.max_total_ms` (plus one request's
    /// timeouts). See [`Client::flush_timeout`].
    pub fn flush(&self) -> Result<(), Error> {
        self.flush_within(self.sh.cfg.retry_max_total, false)
    }

    /// Sends every buffered batch now and replays the spool, waiting at most `timeout` for another thread's send,
    /// starting no request after it and cutting a request still running then (a timeout, the chunk is kept). Destinations that back off are not contacted (a service that throttles
    /// must not be hammered by a caller looping on flush): their chunks go to the spool, or stay with
    /// `BackingOff` without one. Returns the first failure; `Spooled` means everything not delivered is durable
    /// on flash.
    pub fn flush_timeout(&self, timeout: Duration) -> Result<(), Error> {
        self.flush_within(timeout, true)
    }

    /// `flush` and `flush_timeout`: `hard` cuts the requests themselves at the deadline too.
    fn flush_within(&self, timeout: Duration, hard: bool) -> Result<(), Error> {
        let sh = &self.sh;
        let start = sh.clock.now();
        let held = match self.gate.enter(Wait::For(timeout))? {
            Some(h) => h,
            None => {
                return Err(Error::new(
                    ErrorKind::TransientFailure,
                    format!("another thread was sending for the whole flush timeout ({} ms); nothing was flushed: call again", timeout.as_millis()),
                ))
            }
        };
        let mut engine = self.engine();
        let deadline = start + timeout;
        engine.spool_forced = false;
        engine.hard_deadline = hard.then_some(deadline);
        let mut errs = FirstError::default();
        for lane in self.lanes.iter() {
            engine.service_lane(sh, &self.lanes, lane, Mode::All, deadline, &mut errs);
        }
        engine.replay(sh, &self.lanes, deadline, u32::MAX, &mut errs);
        engine.hard_deadline = None;
        if let Some(msg) = engine.spool_fault.take() {
            errs.note(Error::new(ErrorKind::SpoolIo, msg));
        }
        if errs.0.is_none() {
            // Chunks of destinations that back off were not tried: not delivered, but durable.
            // Queued chunks held until the DM's word are delivered as far as this call goes.
            let waiting = engine.spool.as_ref().map_or(0, |sp| {
                sp.pending()
                    .filter(|(_, info)| !engine.is_held(&info.chunk_id))
                    .count()
            });
            if waiting > 0 {
                errs.note(Error::new(
                    ErrorKind::Spooled,
                    format!("{waiting} chunks wait in the spool for destinations that are backing off; poll replays them"),
                ));
            }
        }
        drop(engine);
        drop(held);
        errs.0.map_or(Ok(()), Err)
    }

    /// Writes every buffered batch to the spool without sending (before a planned power-off, say).
    /// `InvalidArgument` without a spool.
    pub fn flush_to_spool(&self) -> Result<(), Error> {
        let Some(held) = self.gate.enter(Wait::Forever)? else {
            return Err(Error::new(ErrorKind::Internal, "gate not entered"));
        };
        let mut engine = self.engine();
        if engine.spool.is_none() {
            return Err(Error::new(
                ErrorKind::InvalidArgument,
                "no spool configured: set spool.dir",
            ));
        }
        let r = self.spool_all(&mut engine);
        drop(engine);
        drop(held);
        r
    }

    fn spool_all(&self, engine: &mut Engine) -> Result<(), Error> {
        let sh = &self.sh;
        let mut errs = FirstError::default();
        let now = sh.clock.now();
        engine.spool_forced = true;
        for lane in self.lanes.iter() {
            engine.service_lane(sh, &self.lanes, lane, Mode::ToSpool, now, &mut errs);
        }
        engine.spool_forced = false;
        // Spooled is what was asked for; only failures count, and success means nothing is left in RAM.
        match errs.0 {
            Some(e) if e.kind != ErrorKind::Spooled => Err(e),
            _ => {
                let left: u64 = self.lanes.iter().map(Lane::records).sum();
                if left > 0 {
                    Err(Error::new(
                        ErrorKind::SpoolIo,
                        format!("{left} records could not be written to the spool and stay in RAM"),
                    ))
                } else {
                    Ok(())
                }
            }
        }
    }

    /// Lane buffers allocated so far, over all destinations (for the memory bound's test).
    pub fn batch_buffers(&self) -> usize {
        self.lanes.iter().map(Lane::buffers).sum()
    }
}

impl Drop for Client {
    /// Closing the client: waits for a send in progress on another thread, then writes every batch still in RAM
    /// to the spool (when there is one), reporting each chunk as spooled. Nothing is sent. Callbacks may run
    /// inside (reports of spooled chunks, log lines).
    fn drop(&mut self) {
        if let Ok(Some(held)) = self.gate.enter(Wait::Forever) {
            let mut engine = self.engine.lock().unwrap_or_else(|p| p.into_inner());
            if engine.spool.is_some() {
                if let Err(e) = self.spool_all(&mut engine) {
                    self.sh.log(
                        LogLevel::Error,
                        &format!("client freed, batches could not be spooled: {e}"),
                    );
                }
            }
            drop(engine);
            drop(held);
        }
        let buffered = self.stats().records_buffered;
        if buffered > 0 {
            self.sh.log(
                LogLevel::Warn,
                &format!("client freed with {buffered} records not delivered: call kedge_flush before kedge_client_free"),
            );
        }
    }
}

fn invalid_destination(id: u32) -> Error {
    Error::new(
        ErrorKind::InvalidDestination,
        format!("destination {id} does not exist: use an id from kedge_client_add_destination"),
    )
}
