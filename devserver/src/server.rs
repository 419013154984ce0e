//! The running server: accept loop, connection threads, shared state, and the ingest handler.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::io::{self, BufReader, Read, Write};
use std::net::{IpAddr, Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crate::faults::{self, Fault, Faults, Rng};
use crate::http::{self, ReadError, Request, Response};
use crate::ingest::{self, ApiError, Target};
use crate::{control, ServerConfig, MAX_CONNECTIONS, MAX_WIRE_BYTES};

/// Idle time allowed between two reads on a connection (also bounds a stalled TLS handshake).
const IO_TIMEOUT: Duration = Duration::from_secs(30);

/// One ingest request as the server saw it.
#[derive(Clone, Debug)]
pub struct RequestLog {
    pub at: Instant,
    pub database: String,
    pub table: String,
    /// `streamFormat` as sent.
    pub format: String,
    pub mapping: Option<String>,
    pub client_request_id: String,
    /// The chunk the request carries: `client_request_id` without its `;<attempt>` (see [`ingest::chunk_id`]).
    pub chunk_id: String,
    /// All request headers, names as sent.
    pub headers: Vec<(String, String)>,
    /// Body size on the wire (compressed).
    pub wire_bytes: usize,
    /// Body size after inflating (0 if it could not be inflated).
    pub raw_bytes: usize,
    /// Records found in the body (0 when refused).
    pub records: usize,
    /// Status answered; 0 when the connection was closed without an answer.
    pub status: u16,
    /// Records were stored.
    pub ingested: bool,
    /// The body was `Content-Encoding: gzip` and inflated with valid CRC32 and ISIZE.
    pub gzip_ok: bool,
}

/// Counters over everything seen since the last reset.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Stats {
    pub requests: usize,
    pub ingested_requests: usize,
    pub records: usize,
    /// Ingested requests whose exact `x-ms-client-request-id` had already been ingested before. A client that
    /// numbers its attempts (kusto-edge does) never repeats one: see `duplicate_chunks` for its resends.
    pub duplicate_request_ids: usize,
    /// Ingested requests whose chunk id (the request id without `;<attempt>`) had already been ingested before:
    /// a resend of a chunk whose answer was lost, which duplicates its data.
    pub duplicate_chunks: usize,
    /// Stored records whose exact bytes had already been stored in the same table (whoever sent them). Counted
    /// over the first [`MAX_RECORD_HASHES`] distinct records since the last reset; records past that are not
    /// remembered, so the count can only be too low, never too high.
    pub duplicate_records: usize,
    /// Records stored per `"db.table"`.
    pub tables: BTreeMap<String, usize>,
    /// Records that arrived by streaming ingestion.
    pub records_streamed: usize,
    /// Records that arrived through the DM's queue (blobs).
    pub records_queued: usize,
    /// Ingest requests that met a fault (scripted or random), by [`crate::Fault::name`], and `"outage"` for those
    /// closed unanswered by [`Server::set_down`].
    pub faults_injected: BTreeMap<String, usize>,
}

impl Stats {
    /// `{"requests":N,"ingested_requests":N,"records":N,"duplicate_request_ids":N,"duplicate_chunks":N,
    /// "duplicate_records":N,"tables":{"db.table":N},"records_streamed":N,"records_queued":N,
    /// "faults_injected":{"name":N}}`
    pub fn to_json(&self) -> String {
        format!(
            r#"{{"requests":{},"ingested_requests":{},"records":{},"duplicate_request_ids":{},"duplicate_chunks":{},"duplicate_records":{},"tables":{},"records_streamed":{},"records_queued":{},"faults_injected":{}}}"#,
            self.requests,
            self.ingested_requests,
            self.records,
            self.duplicate_request_ids,
            self.duplicate_chunks,
            self.duplicate_records,
            serde_json::to_string(&self.tables).unwrap_or_else(|_| "{}".into()),
            self.records_streamed,
            self.records_queued,
            serde_json::to_string(&self.faults_injected).unwrap_or_else(|_| "{}".into())
        )
    }
}

/// Distinct records remembered for `duplicate_records`: 8 bytes each plus the set's overhead, some 32 MiB at most,
/// far less than the records themselves take.
pub const MAX_RECORD_HASHES: usize = 1 << 20;

/// The hash a stored record is remembered by: its table and its exact bytes.
fn record_hash(db: &str, table: &str, record: &[u8]) -> u64 {
    use std::hash::{Hash, Hasher};
    // Fixed keys: the same record hashes the same for the server's whole life.
    let mut h = std::hash::DefaultHasher::new();
    (db, table, record).hash(&mut h);
    h.finish()
}

pub(crate) struct State {
    records: HashMap<(String, String), Vec<Vec<u8>>>,
    /// Hashes of the distinct records stored since the last reset (at most `MAX_RECORD_HASHES`).
    record_hashes: HashSet<u64>,
    duplicate_records: usize,
    records_streamed: usize,
    records_queued: usize,
    requests: Vec<RequestLog>,
    scripted: VecDeque<Fault>,
    random: Vec<(Fault, f64)>,
    rng: Rng,
    seed: u64,
    down_until: Option<Instant>,
    faults_injected: BTreeMap<String, usize>,
}

pub(crate) struct Shared {
    pub(crate) cfg: ServerConfig,
    state: Mutex<State>,
    pub(crate) stopping: AtomicBool,
    shutdown_requested: AtomicBool,
    conns: Mutex<HashMap<u64, TcpStream>>,
    handles: Mutex<Vec<JoinHandle<()>>>,
    active: AtomicUsize,
    next_conn: AtomicU64,
    ids: Mutex<Rng>,
    tls: Option<Arc<rustls::ServerConfig>>,
    pub(crate) auth: crate::auth::AuthState,
    pub(crate) dm: Option<crate::dm::Dm>,
}

/// Lock, and keep going if a connection thread panicked while holding the lock.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Shared {
    fn state(&self) -> MutexGuard<'_, State> {
        lock(&self.state)
    }

    pub(crate) fn push_fault(&self, f: Fault) {
        self.state().scripted.push_back(f);
    }

    pub(crate) fn set_random(&self, faults: Faults) {
        let mut st = self.state();
        st.random = faults.random;
        st.seed = faults.seed;
        st.rng = Rng::new(faults.seed);
    }

    /// The seed of the last `set_random`.
    pub(crate) fn seed(&self) -> u64 {
        self.state().seed
    }

    pub(crate) fn requests(&self) -> Vec<RequestLog> {
        self.state().requests.clone()
    }

    pub(crate) fn set_down(&self, d: Duration) {
        self.state().down_until = Some(Instant::now() + d);
    }

    pub(crate) fn reset(&self) {
        let mut st = self.state();
        st.records.clear();
        st.record_hashes = HashSet::new();
        st.duplicate_records = 0;
        st.records_streamed = 0;
        st.records_queued = 0;
        st.requests.clear();
        st.scripted.clear();
        st.random.clear();
        st.down_until = None;
        st.faults_injected.clear();
        drop(st);
        if let Some(dm) = &self.dm {
            dm.reset();
        }
    }

    pub(crate) fn request_shutdown(&self) {
        self.shutdown_requested.store(true, Ordering::SeqCst);
    }

    pub(crate) fn records(&self, db: &str, table: &str) -> Vec<Vec<u8>> {
        self.state()
            .records
            .get(&(db.to_string(), table.to_string()))
            .cloned()
            .unwrap_or_default()
    }

    pub(crate) fn stats(&self) -> Stats {
        let st = self.state();
        let mut s = Stats {
            requests: st.requests.len(),
            duplicate_records: st.duplicate_records,
            records_streamed: st.records_streamed,
            records_queued: st.records_queued,
            faults_injected: st.faults_injected.clone(),
            ..Stats::default()
        };
        let mut seen = HashSet::new();
        let mut chunks = HashSet::new();
        for r in st.requests.iter().filter(|r| r.ingested) {
            s.ingested_requests += 1;
            if !seen.insert(r.client_request_id.as_str()) {
                s.duplicate_request_ids += 1;
            }
            if !chunks.insert(r.chunk_id.as_str()) {
                s.duplicate_chunks += 1;
            }
        }
        for ((db, table), recs) in &st.records {
            s.records += recs.len();
            s.tables.insert(format!("{db}.{table}"), recs.len());
        }
        s
    }

    fn new_activity_id(&self) -> String {
        let mut r = lock(&self.ids);
        let (a, b) = (r.next_u64(), r.next_u64());
        // RFC 4122 version 4 layout.
        let a = (a & !0xf000) | 0x4000;
        let b = (b & 0x3fff_ffff_ffff_ffff) | 0x8000_0000_0000_0000;
        format!(
            "{:08x}-{:04x}-{:04x}-{:04x}-{:012x}",
            a >> 32,
            (a >> 16) & 0xffff,
            a & 0xffff,
            b >> 48,
            b & 0xffff_ffff_ffff
        )
    }

    /// Store accepted records of `db`.`table` (streamed, or through the queue when `queued`).
    pub(crate) fn store_records(&self, db: &str, table: &str, records: Vec<Vec<u8>>, queued: bool) {
        let mut st = self.state();
        let st = &mut *st;
        for r in &records {
            let h = record_hash(db, table, r);
            if st.record_hashes.contains(&h) {
                st.duplicate_records += 1;
            } else if st.record_hashes.len() < MAX_RECORD_HASHES {
                st.record_hashes.insert(h);
            }
        }
        if queued {
            st.records_queued += records.len();
        } else {
            st.records_streamed += records.len();
        }
        st.records
            .entry((db.to_string(), table.to_string()))
            .or_default()
            .extend(records);
    }

    pub(crate) fn sleep_unless_stopping(&self, d: Duration) {
        let end = Instant::now() + d;
        while !self.stopping.load(Ordering::SeqCst) {
            let now = Instant::now();
            if now >= end {
                break;
            }
            thread::sleep((end - now).min(Duration::from_millis(20)));
        }
    }
}

/// ISO 8601 UTC timestamp with 7 fractional digits, like the service's `@context.timestamp`.
pub(crate) fn timestamp_now() -> String {
    let d = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    format!(
        "{}.{:07}Z",
        utc_seconds(d.as_secs() as i64),
        d.subsec_nanos() / 100
    )
}

/// `YYYY-MM-DDThh:mm:ss` (no zone suffix) of a Unix time in seconds (by the `time` crate; clamped to
/// the years 1..=9999).
pub(crate) fn utc_seconds(secs: i64) -> String {
    use time::{Date, OffsetDateTime, PrimitiveDateTime, Time};
    let first = PrimitiveDateTime::new(
        Date::from_calendar_date(1, time::Month::January, 1).expect("valid date"),
        Time::MIDNIGHT,
    );
    let last = PrimitiveDateTime::new(
        Date::from_calendar_date(9999, time::Month::December, 31).expect("valid date"),
        Time::from_hms(23, 59, 59).expect("valid time"),
    );
    let secs = secs.clamp(
        first.assume_utc().unix_timestamp(),
        last.assume_utc().unix_timestamp(),
    );
    let t = OffsetDateTime::from_unix_timestamp(secs).expect("clamped to the supported range");
    format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}",
        t.year(),
        u8::from(t.month()),
        t.day(),
        t.hour(),
        t.minute(),
        t.second()
    )
}

/// `http://127.0.0.1:PORT`, or `https://localhost:PORT` with TLS.
fn url_of(addr: SocketAddr, tls: bool) -> String {
    let port = addr.port();
    if tls {
        return format!("https://localhost:{port}");
    }
    match addr.ip() {
        IpAddr::V4(ip) if ip.is_unspecified() => format!("http://127.0.0.1:{port}"),
        IpAddr::V4(ip) => format!("http://{ip}:{port}"),
        IpAddr::V6(ip) if ip.is_unspecified() => format!("http://[::1]:{port}"),
        IpAddr::V6(ip) => format!("http://[{ip}]:{port}"),
    }
}

/// A running server. Stops (closing every connection and joining every thread) on drop.
pub struct Server {
    pub(crate) shared: Arc<Shared>,
    addr: SocketAddr,
    ca_pem: Option<String>,
    accept: Option<JoinHandle<()>>,
    ingestor: Option<JoinHandle<()>>,
}

impl Server {
    /// Bind and start serving in background threads.
    pub fn start(cfg: ServerConfig) -> io::Result<Server> {
        let listener = TcpListener::bind(cfg.bind)?;
        let addr = listener.local_addr()?;
        let (tls, ca_pem) = if cfg.tls {
            let m = match &cfg.tls_ca {
                Some(ca) => ca.material()?,
                None => crate::tls::generate()?,
            };
            (Some(m.config), Some(m.ca_pem))
        } else {
            (None, None)
        };
        let seed = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_nanos() as u64
            ^ (u64::from(addr.port()) << 48);
        let auth =
            crate::auth::AuthState::new(cfg.auth.clone(), url_of(addr, cfg.tls), cfg.verbose);
        let dm = match &cfg.dm {
            Some(d) => Some(
                crate::dm::Dm::setup(d.clone(), &auth.random_bytes(32))
                    .map_err(io::Error::other)?,
            ),
            None => None,
        };
        let shared = Arc::new(Shared {
            cfg,
            state: Mutex::new(State {
                records: HashMap::new(),
                record_hashes: HashSet::new(),
                duplicate_records: 0,
                records_streamed: 0,
                records_queued: 0,
                requests: Vec::new(),
                scripted: VecDeque::new(),
                random: Vec::new(),
                rng: Rng::new(0),
                seed: 0,
                down_until: None,
                faults_injected: BTreeMap::new(),
            }),
            stopping: AtomicBool::new(false),
            shutdown_requested: AtomicBool::new(false),
            conns: Mutex::new(HashMap::new()),
            handles: Mutex::new(Vec::new()),
            active: AtomicUsize::new(0),
            next_conn: AtomicU64::new(0),
            ids: Mutex::new(Rng::new(seed)),
            tls,
            auth,
            dm,
        });
        let s2 = shared.clone();
        let accept = thread::Builder::new()
            .name("devserver-accept".into())
            .spawn(move || accept_loop(s2, listener))?;
        let ingestor = if shared.dm.is_some() {
            let s3 = shared.clone();
            Some(
                thread::Builder::new()
                    .name("devserver-dm-ingestor".into())
                    .spawn(move || crate::dm::run_ingestor(s3))?,
            )
        } else {
            None
        };
        Ok(Server {
            shared,
            addr,
            ca_pem,
            accept: Some(accept),
            ingestor,
        })
    }

    /// `http://127.0.0.1:PORT`, or `https://localhost:PORT` with TLS.
    pub fn url(&self) -> String {
        url_of(self.addr, self.shared.cfg.tls)
    }

    /// The bound address (the real port when bound to port 0).
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// PEM of the test CA that signed the server certificate (TLS only).
    pub fn ca_pem(&self) -> Option<String> {
        self.ca_pem.clone()
    }

    /// Replace the random faults and restart their PRNG from `faults.seed`.
    pub fn set_faults(&self, faults: Faults) {
        self.shared.set_random(faults);
    }

    /// Queue a fault for the next ingest request (FIFO; scripted faults go before random ones).
    pub fn push_fault(&self, f: Fault) {
        self.shared.push_fault(f);
    }

    /// Answer every ingest request by closing the connection, for `d` from now (an outage).
    pub fn set_down(&self, d: Duration) {
        self.shared.set_down(d);
    }

    /// Every accepted record of `db`.`table`, in arrival order, duplicates included.
    pub fn records(&self, db: &str, table: &str) -> Vec<Vec<u8>> {
        self.shared.records(db, table)
    }

    /// Every ingest request seen, in the order they were answered.
    pub fn requests(&self) -> Vec<RequestLog> {
        self.shared.state().requests.clone()
    }

    /// Counters, as `GET /_dev/stats` reports them.
    pub fn stats(&self) -> Stats {
        self.shared.stats()
    }

    /// Forget records, requests, faults and any outage (and the DM's counters, violations and faults).
    pub fn reset(&self) {
        self.shared.reset();
    }

    /// The data-management endpoint: the same as [`Server::url`] (management commands share the listener).
    /// `None` without [`crate::ServerConfig::dm`].
    pub fn dm_url(&self) -> Option<String> {
        self.shared.dm.as_ref().map(|_| self.url())
    }

    /// The DM's counters (all zero without a DM).
    pub fn dm_stats(&self) -> crate::dm::DmStats {
        self.shared
            .dm
            .as_ref()
            .map(|d| d.stats())
            .unwrap_or_default()
    }

    /// Every protocol violation the DM saw (at most [`crate::dm::MAX_VIOLATIONS`]; `dm_stats().violations`
    /// counts them all).
    pub fn dm_violations(&self) -> Vec<String> {
        self.shared
            .dm
            .as_ref()
            .map(|d| d.violations())
            .unwrap_or_default()
    }

    /// Every message the ingestor processed, in order.
    pub fn dm_ingestions(&self) -> Vec<crate::dm::QueuedIngestion> {
        self.shared
            .dm
            .as_ref()
            .map(|d| d.ingestions())
            .unwrap_or_default()
    }

    /// The `AuthorizationContext` the DM hands out.
    pub fn dm_identity_token(&self) -> Option<String> {
        self.shared
            .dm
            .as_ref()
            .map(|d| d.identity_token().to_string())
    }

    /// The names of the DM's queues, containers and table.
    pub fn dm_resource_names(&self) -> Option<crate::dm::DmResourceNames> {
        self.shared.dm.as_ref().map(|d| d.names.clone())
    }

    /// The DM's misbehaviour now.
    pub fn dm_faults(&self) -> crate::dm::DmFaults {
        self.shared
            .dm
            .as_ref()
            .map(|d| d.faults())
            .unwrap_or_default()
    }

    /// Replace the DM's misbehaviour (no effect without a DM).
    pub fn set_dm_faults(&self, f: crate::dm::DmFaults) {
        if let Some(d) = &self.shared.dm {
            d.set_faults(f);
        }
    }

    /// Whether `POST /_dev/shutdown` was received.
    pub fn shutdown_requested(&self) -> bool {
        self.shared.shutdown_requested.load(Ordering::SeqCst)
    }

    /// Stop serving: close every connection and join every thread.
    pub fn stop(self) {}

    fn stop_inner(&mut self) {
        let Some(accept) = self.accept.take() else {
            return;
        };
        self.shared.stopping.store(true, Ordering::SeqCst);
        crate::http::wake_accept(self.addr);
        let _ = accept.join();
        if let Some(i) = self.ingestor.take() {
            let _ = i.join();
        }
        for s in lock(&self.shared.conns).values() {
            let _ = s.shutdown(Shutdown::Both);
        }
        let handles = std::mem::take(&mut *lock(&self.shared.handles));
        for h in handles {
            let _ = h.join();
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop_inner();
    }
}

fn accept_loop(shared: Arc<Shared>, listener: TcpListener) {
    loop {
        let stream = match listener.accept() {
            Ok((s, _)) => s,
            Err(_) => {
                if shared.stopping.load(Ordering::SeqCst) {
                    return;
                }
                // Out of file descriptors and the like: back off instead of spinning.
                thread::sleep(Duration::from_millis(20));
                continue;
            }
        };
        if shared.stopping.load(Ordering::SeqCst) {
            return;
        }
        if shared.active.load(Ordering::SeqCst) >= MAX_CONNECTIONS {
            if shared.cfg.verbose {
                eprintln!("devserver: refusing connection: {MAX_CONNECTIONS} already open");
            }
            continue;
        }
        let id = shared.next_conn.fetch_add(1, Ordering::SeqCst);
        let Ok(registered) = stream.try_clone() else {
            continue;
        };
        lock(&shared.conns).insert(id, registered);
        shared.active.fetch_add(1, Ordering::SeqCst);
        let s2 = shared.clone();
        let spawned = thread::Builder::new()
            .name(format!("devserver-conn-{id}"))
            .spawn(move || {
                let _ = serve_connection(&s2, stream);
                lock(&s2.conns).remove(&id);
                s2.active.fetch_sub(1, Ordering::SeqCst);
            });
        match spawned {
            Ok(h) => {
                let mut hs = lock(&shared.handles);
                hs.retain(|h| !h.is_finished());
                hs.push(h);
            }
            Err(_) => {
                lock(&shared.conns).remove(&id);
                shared.active.fetch_sub(1, Ordering::SeqCst);
            }
        }
    }
}

/// Anything a connection can be read from and written to: plain TCP or TLS over TCP.
trait Conn: Read + Write + Send {}
impl<T: Read + Write + Send> Conn for T {}

/// What to do with a connection after a request.
pub(crate) enum Reply {
    Send(Response),
    /// Abort with an RST, no answer.
    Reset,
    /// Close with a FIN, no answer.
    Close,
}

/// Make the next close send an RST instead of a FIN (SO_LINGER with a zero timeout, set by `socket2`).
fn arm_reset(s: &TcpStream) {
    // If the option cannot be set the close is a FIN, which the fault's tests would notice.
    let _ = socket2::SockRef::from(s).set_linger(Some(Duration::ZERO));
}

/// After answering a request whose body we did not read, stop sending and swallow what the
/// client is still sending for a moment, so our answer is not destroyed by an RST.
fn lingering_close(raw: &TcpStream) {
    let _ = raw.shutdown(Shutdown::Write);
    let _ = raw.set_read_timeout(Some(Duration::from_millis(200)));
    let deadline = Instant::now() + Duration::from_secs(2);
    let mut buf = [0u8; 16 * 1024];
    let mut total = 0usize;
    let mut r = raw;
    while Instant::now() < deadline && total < 2 * MAX_WIRE_BYTES {
        match r.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => total += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) => {}
            Err(_) => break,
        }
    }
}

fn serve_connection(shared: &Arc<Shared>, stream: TcpStream) -> io::Result<()> {
    stream.set_read_timeout(Some(IO_TIMEOUT))?;
    stream.set_write_timeout(Some(IO_TIMEOUT))?;
    let _ = stream.set_nodelay(true);
    let raw = stream.try_clone()?;
    let conn: Box<dyn Conn> = match &shared.tls {
        Some(cfg) => {
            let tls = rustls::ServerConnection::new(cfg.clone()).map_err(io::Error::other)?;
            Box::new(rustls::StreamOwned::new(tls, stream))
        }
        None => Box::new(stream),
    };
    let mut r = BufReader::with_capacity(64 * 1024, conn);
    loop {
        if shared.stopping.load(Ordering::SeqCst) {
            return Ok(());
        }
        let head = match http::read_head(&mut r) {
            Ok(Some(h)) => h,
            Ok(None) | Err(ReadError::Closed) | Err(ReadError::Io(_)) => return Ok(()),
            Err(e) => return refuse_unread(shared, &mut r, &raw, None, e),
        };
        let framing = match http::framing(&head, MAX_WIRE_BYTES) {
            Ok(f) => f,
            Err(e) => return refuse_unread(shared, &mut r, &raw, Some(&head), e),
        };
        if framing != http::Framing::None
            && head
                .header("expect")
                .is_some_and(|v| v.eq_ignore_ascii_case("100-continue"))
        {
            r.get_mut().write_all(b"HTTP/1.1 100 Continue\r\n\r\n")?;
            r.get_mut().flush()?;
        }
        let body = match http::read_body(&mut r, framing, MAX_WIRE_BYTES) {
            Ok(b) => b,
            Err(ReadError::Io(_)) | Err(ReadError::Closed) => return Ok(()),
            Err(e) => return refuse_unread(shared, &mut r, &raw, Some(&head), e),
        };
        let req = Request { body, ..head };
        let close = req.wants_close();
        match route(shared, &req) {
            Reply::Send(resp) => {
                let close = close || shared.stopping.load(Ordering::SeqCst);
                http::write_response(r.get_mut(), &resp, close)?;
                if close {
                    let _ = raw.shutdown(Shutdown::Write);
                    return Ok(());
                }
            }
            Reply::Reset => {
                arm_reset(&raw);
                return Ok(());
            }
            Reply::Close => {
                let _ = raw.shutdown(Shutdown::Both);
                return Ok(());
            }
        }
    }
}

/// Answer a request that could not be read whole, then close.
fn refuse_unread(
    shared: &Shared,
    r: &mut BufReader<Box<dyn Conn>>,
    raw: &TcpStream,
    head: Option<&Request>,
    e: ReadError,
) -> io::Result<()> {
    let (err, declared) = match e {
        ReadError::TooLarge { declared } => (
            ingest::too_large(format!(
                "Request body exceeds the {MAX_WIRE_BYTES}-byte limit of this server."
            )),
            declared.unwrap_or(0),
        ),
        ReadError::HeadersTooLarge => (
            ApiError::new(
                431,
                "General_BadRequest",
                "Kusto.DataNode.Exceptions.BadRequest",
                "Headers too large.",
                true,
            ),
            0,
        ),
        ReadError::Malformed(m) => (
            ingest::bad_request("General_BadRequest", format!("Malformed HTTP request: {m}")),
            0,
        ),
        ReadError::Closed | ReadError::Io(_) => return Ok(()),
    };
    let crid = head
        .and_then(|h| h.header("x-ms-client-request-id"))
        .unwrap_or("")
        .to_string();
    let activity = shared.new_activity_id();
    let resp = error_response(&err, &crid, &activity);
    if let Some(target) = head.and_then(ingest::parse_target) {
        let h = head.unwrap();
        let mut log = new_log(h, &target, &crid);
        log.wire_bytes = declared;
        finish(shared, log, &resp.status.to_string(), resp.status);
    }
    http::write_response(r.get_mut(), &resp, true)?;
    lingering_close(raw);
    Ok(())
}

pub(crate) fn error_response(e: &ApiError, crid: &str, activity: &str) -> Response {
    Response::json(e.status, e.render(crid, activity, &timestamp_now()))
        .header("x-ms-activity-id", activity)
}

fn route(shared: &Shared, req: &Request) -> Reply {
    if let Some(resp) = shared.auth.route(req) {
        return Reply::Send(resp);
    }
    if req.path == "/_dev" || req.path.starts_with("/_dev/") {
        return control::handle(shared, req);
    }
    let crid = req.header("x-ms-client-request-id").unwrap_or("");
    let activity = shared.new_activity_id();
    if req.path == "/v1/rest/mgmt" {
        return crate::dm::handle_mgmt(shared, req, &activity);
    }
    match ingest::parse_target(req) {
        None => {
            let e = ApiError::new(
                404,
                "NotFound",
                "Kusto.Common.Svc.Exceptions.PathNotFoundException",
                format!("Path '{}' was not found. Streaming ingestion is POST /v1/rest/ingest/{{database}}/{{table}}.", req.path),
                true,
            );
            Reply::Send(error_response(&e, crid, &activity))
        }
        Some(_) if req.method != "POST" => {
            let e = ApiError::new(
                405,
                "MethodNotAllowed",
                "Kusto.Common.Svc.Exceptions.MethodNotAllowedException",
                format!(
                    "Method '{}' is not allowed on the streaming ingestion endpoint; use POST.",
                    req.method
                ),
                true,
            );
            Reply::Send(error_response(&e, crid, &activity).header("Allow", "POST"))
        }
        Some(target) => handle_ingest(shared, req, target, activity),
    }
}

fn new_log(req: &Request, target: &Target, crid: &str) -> RequestLog {
    RequestLog {
        at: Instant::now(),
        database: target.database.clone(),
        table: target.table.clone(),
        format: target.format.clone(),
        mapping: target.mapping.clone(),
        client_request_id: crid.to_string(),
        chunk_id: ingest::chunk_id(crid).to_string(),
        headers: req.headers.clone(),
        wire_bytes: req.body.len(),
        raw_bytes: 0,
        records: 0,
        status: 0,
        ingested: false,
        gzip_ok: false,
    }
}

/// Record the request (before anything reaches the client, so a client that has its answer
/// always finds the request logged).
fn finish(shared: &Shared, mut log: RequestLog, what: &str, status: u16) {
    log.status = status;
    if shared.cfg.verbose {
        eprintln!(
            "devserver: POST {}.{} format={} crid={} wire={} raw={} records={} -> {}",
            log.database,
            log.table,
            log.format,
            log.client_request_id,
            log.wire_bytes,
            log.raw_bytes,
            log.records,
            what
        );
    }
    shared.state().requests.push(log);
}

fn fault_reply(f: &Fault, target: &Target, crid: &str, activity: &str) -> Response {
    let with_retry_after = |resp: Response, ra: &Option<String>| match ra {
        Some(v) => resp.header("Retry-After", v.clone()),
        None => resp,
    };
    let err = |e: ApiError| error_response(&e, crid, activity);
    match f {
        Fault::Throttle { retry_after } => with_retry_after(err(ingest::throttled()), retry_after),
        Fault::Unavailable { retry_after } => with_retry_after(
            Response::new(503).header("x-ms-activity-id", activity),
            retry_after,
        ),
        Fault::InternalError => err(ingest::internal_error(500)),
        Fault::TransientError => err(ingest::internal_error(400)),
        Fault::RejectData => err(ingest::bad_request(
            "Stream_WrongNumberOfFields",
            "Inconsistent number of fields in the input records. HRESULT: 0x80DA0008",
        )),
        Fault::TableMissing => err(ingest::entity_not_found("Table", &target.table)),
        Fault::StreamingDisabled => {
            err(ingest::streaming_disabled(&target.database, &target.table))
        }
        Fault::Unauthorized => err(ingest::unauthorized(
            "The bearer token is invalid or expired.",
        ))
        .header("WWW-Authenticate", "Bearer"),
        Fault::Forbidden => err(ingest::forbidden(&target.database, &target.table)),
        Fault::EmptyOk => Response::new(200)
            .header("Content-Type", "application/json; charset=utf-8")
            .header("x-ms-activity-id", activity),
        Fault::GarbageOk => Response::new(200)
            .header("Content-Type", "text/html")
            .header("x-ms-activity-id", activity)
            .body(b"<html><body>Ingested, probably.</body></html>".to_vec()),
        // Handled by the caller: they are not answers.
        Fault::Reset | Fault::LoseReply | Fault::Slow(_) => Response::new(500),
    }
}

fn handle_ingest(shared: &Shared, req: &Request, target: Target, activity: String) -> Reply {
    let crid = req
        .header("x-ms-client-request-id")
        .unwrap_or("")
        .to_string();
    let mut log = new_log(req, &target, &crid);
    let (down, fault) = {
        let mut st = shared.state();
        let st = &mut *st;
        let (down, f) = if st.down_until.is_some_and(|t| Instant::now() < t) {
            (true, None)
        } else {
            let f = st
                .scripted
                .pop_front()
                .or_else(|| faults::draw(&mut st.rng, &st.random));
            (false, f)
        };
        let name = if down {
            Some("outage")
        } else {
            f.as_ref().map(Fault::name)
        };
        if let Some(name) = name {
            *st.faults_injected.entry(name.to_string()).or_default() += 1;
        }
        (down, f)
    };
    if down {
        finish(shared, log, "closed (outage)", 0);
        return Reply::Close;
    }
    let mut lose_reply = false;
    match &fault {
        None => {}
        Some(Fault::Slow(d)) => shared.sleep_unless_stopping(*d),
        Some(Fault::Reset) => {
            finish(shared, log, "reset (fault)", 0);
            return Reply::Reset;
        }
        Some(Fault::LoseReply) => lose_reply = true,
        Some(f) => {
            let resp = fault_reply(f, &target, &crid, &activity);
            finish(
                shared,
                log,
                &format!("{} (fault {f:?})", resp.status),
                resp.status,
            );
            return Reply::Send(resp);
        }
    }
    let resp = match check_and_split(shared, req, &target, &mut log) {
        Ok(records) => {
            let n = records.len();
            shared.store_records(&target.database, &target.table, records, false);
            log.ingested = true;
            Response::json(200, ingest::success_body(n))
                .header("x-ms-activity-id", activity.clone())
        }
        Err(e) => {
            let resp = error_response(&e, &crid, &activity);
            if e.status == 401 {
                resp.header("WWW-Authenticate", "Bearer")
            } else {
                resp
            }
        }
    };
    if lose_reply {
        finish(
            shared,
            log,
            &format!("reply lost (fault; would have been {})", resp.status),
            0,
        );
        return Reply::Reset;
    }
    let status = resp.status;
    finish(shared, log, &status.to_string(), status);
    Reply::Send(resp)
}

/// Everything the service checks, in its order; fills in the log as it learns sizes.
fn check_and_split(
    shared: &Shared,
    req: &Request,
    target: &Target,
    log: &mut RequestLog,
) -> Result<Vec<Vec<u8>>, ApiError> {
    let cfg = &shared.cfg;
    shared.auth.check_ingest(req, cfg.token.as_deref())?;
    ingest::check_headers(req)?;
    if target.source_kind.as_deref().is_some_and(|k| !k.is_empty()) {
        return Err(ingest::bad_request(
            "BadRequest_NotSupported",
            "sourceKind is not supported by this server: send the data in the body.",
        ));
    }
    if target.format.is_empty() {
        return Err(ingest::bad_request(
            "General_BadRequest",
            "Query parameter 'streamFormat' is required.",
        ));
    }
    let Some((_, framing)) = ingest::format_framing(&target.format) else {
        return Err(ingest::bad_request(
            "BadRequest_FormatNotSupported",
            format!(
                "Format '{}' is not supported for streaming ingestion.",
                target.format
            ),
        ));
    };
    if let Some(tables) = &cfg.tables {
        if !tables
            .iter()
            .any(|(d, t)| *d == target.database && *t == target.table)
        {
            return Err(if tables.iter().any(|(d, _)| *d == target.database) {
                ingest::entity_not_found("Table", &target.table)
            } else {
                ingest::entity_not_found("Database", &target.database)
            });
        }
    }
    if let (Some(allowed), Some(m)) = (&cfg.mappings, &target.mapping) {
        if !allowed.iter().any(|a| a == m) {
            return Err(ingest::bad_request(
                "BadRequest_MappingReferenceWasNotFound",
                format!(
                    "Mapping reference '{m}' of table '{}' in database '{}' could not be found.",
                    target.table, target.database
                ),
            ));
        }
    }
    let (raw, was_gzip) = ingest::decode_body(req, cfg.max_raw_bytes)?;
    log.raw_bytes = raw.len();
    log.gzip_ok = was_gzip;
    let records = ingest::split_records(framing, &raw)?;
    log.records = records.len();
    Ok(records)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamp_shape() {
        let t = timestamp_now();
        assert_eq!(t.len(), "2024-01-01T00:00:00.0000000Z".len(), "{t}");
        assert!(t.starts_with("20") && t.ends_with('Z'));
    }
}
