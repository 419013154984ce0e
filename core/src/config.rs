//! Client configuration: string keys and values, in the manner of librdkafka, so that new options never change the
//! C ABI and a config file maps onto it line by line.
//!
//! Every limit the client lives by is here, and [`Config::memory_bound`] turns them into the number of heap bytes a
//! client may hold at most.

use std::fmt;
use std::time::Duration;

use crate::error::{Error, ErrorKind};

/// The service refuses a streaming request over 4 MB; raw (uncompressed) size is the measure every SDK agrees with.
pub const MAX_REQUEST_RAW_BYTES: usize = 4 * 1024 * 1024;
/// The smallest batch buffer we accept: below it the per-request overhead dominates.
pub const MIN_BATCH_BYTES: usize = 1024;
/// How many destinations one client may serve at most, whatever the config says.
pub const MAX_DESTINATIONS: usize = 256;
/// How much of a response body is read (error JSON, success data set); the rest is discarded.
pub const RESPONSE_BODY_BYTES: usize = 8 * 1024;
/// Heap a client holds besides its buffers: TLS session state (two 16 KiB records plus rustls' own), the HTTP
/// agent's connection buffers, the destinations table and strings. Measured, then rounded up generously.
pub const FIXED_OVERHEAD_BYTES: usize = 320 * 1024;

/// Heap of managed mode's second HTTP agent (its input and output buffers, one pooled TLS connection).
pub const MANAGED_AGENT_BYTES: u64 = 96 * 1024;
/// Heap of an open spool besides its index: the 64 KiB scratch that verifies chunks, directory listings.
pub const SPOOL_FIXED_BYTES: u64 = 96 * 1024;
/// Heap of a credential while it fetches a token: the token endpoint's answer (read up to 64 KiB), the request
/// form, an RSA key and certificate for client assertions, the cached token.
pub const AUTH_BYTES: u64 = 96 * 1024;
/// Heap per chunk in the spool's index (entry, tree node, file name while listing).
pub const SPOOL_BYTES_PER_CHUNK: u64 = 192;
/// Heap per chunk in the spool's quarantine index (entry and tree node; the names of the chunk and its message,
/// and their sort entries, while `open` lists `rejected/` and `corrupt/`).
pub const SPOOL_BYTES_PER_QUARANTINED: u64 = 160;
/// Default of `spool.quarantine_max_chunks`.
pub const SPOOL_QUARANTINE_MAX_CHUNKS: u32 = 256;

/// Log verbosity, numbered as the C enum.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
#[repr(u32)]
pub enum LogLevel {
    /// Failures the caller must know about.
    Error = 1,
    /// Something went wrong but was handled (a retry, a lost reply).
    Warn = 2,
    /// One line per request.
    Info = 3,
    /// Everything.
    Debug = 4,
}

/// A 32-byte key, zeroed when dropped and never shown by `Debug`.
#[derive(Clone)]
pub struct SecretKey(pub [u8; 32]);

impl Drop for SecretKey {
    fn drop(&mut self) {
        zeroize::Zeroize::zeroize(&mut self.0);
    }
}

impl fmt::Debug for SecretKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SecretKey(***)")
    }
}

/// Reads a spool key: 32 raw bytes, or 64 hexadecimal characters (a trailing newline is fine).
pub fn parse_key(bytes: &[u8]) -> Result<SecretKey, Error> {
    let bad = || {
        Error::new(
            ErrorKind::ConfigInvalidValue,
            "spool key must be exactly 32 bytes, or 64 hexadecimal characters: make one with `head -c 32 /dev/urandom > key`",
        )
    };
    if bytes.len() == 32 {
        let mut k = [0u8; 32];
        k.copy_from_slice(bytes);
        return Ok(SecretKey(k));
    }
    let text = std::str::from_utf8(bytes).map_err(|_| bad())?.trim();
    if text.len() != 64 {
        return Err(bad());
    }
    let mut k = [0u8; 32];
    for (i, b) in k.iter_mut().enumerate() {
        *b = u8::from_str_radix(&text[2 * i..2 * i + 2], 16).map_err(|_| bad())?;
    }
    Ok(SecretKey(k))
}

/// Everything a client needs to be created. Built with [`Config::set`]; validated by [`Config::validate`].
#[derive(Clone, Debug)]
pub struct Config {
    /// Cluster (engine) URL, e.g. `https://mycluster.westeurope.kusto.windows.net`.
    pub url: Option<String>,
    /// Credentials: `auth.*` and `connection_string` (see `crate::auth`).
    pub auth: crate::auth::AuthConfig,
    /// `proxy.url` and `proxy.no_proxy` (else the environment's `HTTPS_PROXY` and `NO_PROXY`).
    pub proxy: crate::transport::ProxyConfig,
    /// PEM CA certificates added to (or, without bundled roots, replacing) the trust store.
    pub ca_pem: Vec<u8>,
    /// Trust Mozilla's root certificates compiled into the library.
    pub bundled_roots: bool,
    /// Allow `http://` at all (loopback only unless `allow_plain_remote`).
    pub allow_plain: bool,
    /// Allow `http://` to hosts that are not loopback. A token is still never sent there.
    pub allow_plain_remote: bool,
    /// TCP + TLS connection setup bound.
    pub connect_timeout: Duration,
    /// Bound on sending headers and body of one request.
    pub send_timeout: Duration,
    /// Bound on waiting for and reading the response.
    pub recv_timeout: Duration,
    /// Raw capacity of each destination's batch buffer.
    pub batch_bytes: usize,
    /// A batch older than this is sent by `poll`.
    pub batch_max_age: Duration,
    /// Full batches a destination's lane holds for the sender besides the filling one; `append` returns
    /// `QueueFull` beyond.
    pub batch_sealed: usize,
    /// gzip level of request bodies: 1 (fastest) to 9 (smallest).
    pub gzip_level: u8,
    /// Whether `append` checks the JSON syntax of `json` records (`multijson` records are always checked: their
    /// boundaries in a batch depend on it). `false` is refused by `Client::new` with a spool or a mode other than
    /// streaming: only the streaming sender splits a refused chunk, from RAM.
    pub json_check: bool,
    /// Destinations one client may have.
    pub max_destinations: usize,
    /// Attempts of one send (the first included) before the batch is handed back.
    pub retry_max_attempts: u32,
    /// Backoff before the second attempt; doubles each time.
    pub retry_base: Duration,
    /// Cap of one backoff delay inside a send.
    pub retry_max_delay: Duration,
    /// Bound on a whole send including its retries; no call blocks longer than about this plus one request.
    pub retry_max_total: Duration,
    /// Cap of a destination's backoff between failed sends (long, because an operator may need to fix the cluster).
    pub backoff_max: Duration,
    /// `x-ms-app`.
    pub app: String,
    /// Version of the application, appended to `x-ms-client-version`.
    pub app_version: Option<String>,
    /// `x-ms-user`.
    pub user: String,
    /// Lowest level passed to the log callback.
    pub log_level: LogLevel,
    /// Spool directory on flash; `None`: no spool (failed batches stay in RAM).
    pub spool_dir: Option<std::path::PathBuf>,
    /// Upper bound of the spool's pending chunk files, in bytes.
    pub spool_max_bytes: u64,
    /// Upper bound of chunks in the spool (also bounds the RAM of its index).
    pub spool_max_chunks: u32,
    /// What a full spool does with a new chunk.
    pub spool_policy: crate::spool::FullPolicy,
    /// AES-256-GCM key for chunks at rest.
    pub spool_key: Option<SecretKey>,
    /// Write every chunk to the spool before sending it.
    pub spool_write_ahead: bool,
    /// Drop the oldest chunks at open when the spool holds more than its (lowered) limits. Off by default:
    /// a shrunk limit keeps the backlog and refuses new chunks until it drains.
    pub spool_trim_on_open: bool,
    /// Spooled chunks one `poll` replays at most.
    pub replay_per_poll: u32,
    /// Upper bound of `rejected/` and `corrupt/` in bytes; `None`: an eighth of `spool_max_bytes`
    /// (see [`Config::spool_quarantine_max_bytes`]).
    pub spool_quarantine_max_bytes: Option<u64>,
    /// Upper bound of chunks in `rejected/` and `corrupt/` (also bounds the RAM of their index).
    pub spool_quarantine_max_chunks: u32,
    /// How chunks go in: streaming (the default), queued (blob + queue message) or managed.
    pub ingest_mode: IngestMode,
    /// The data-management endpoint as given (`ingest.dm_url`); `None`: derived from `url` (see
    /// [`Config::dm_url`]).
    pub dm_url: Option<String>,
    /// Which DM reports a queued chunk asks for (`queued.report`).
    pub queued_report: QueuedReport,
    /// Where the DM reports go (`queued.report_method`).
    pub queued_report_method: ReportMethod,
    /// Managed mode: how long a table whose streaming policy is off goes queued before streaming is tried again.
    pub managed_queued_for: Duration,
    /// Spooled chunks of one destination that go up together as the blocks of one blob (`queued.merge_chunks`;
    /// 1: each alone).
    pub queued_merge_chunks: usize,
}

/// `ingest.mode`: which protocol the client speaks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IngestMode {
    /// `POST /v1/rest/ingest`: one request per chunk, to the engine.
    Streaming,
    /// Blob upload plus a message to the DM's queue.
    Queued,
    /// Streaming first, queued for what streaming cannot take.
    Managed,
}

/// `queued.report`: the `ReportLevel` of the queue message.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum QueuedReport {
    /// No reports (`ReportLevel` 1).
    None,
    /// Failures only (`ReportLevel` 0), the default: what a fleet can afford.
    Failures,
    /// Failures and successes (`ReportLevel` 2).
    All,
}

impl QueuedReport {
    /// The message's `ReportLevel` number.
    pub fn level(self) -> u8 {
        match self {
            QueuedReport::Failures => 0,
            QueuedReport::None => 1,
            QueuedReport::All => 2,
        }
    }
}

/// `queued.report_method`: the message's `ReportMethod`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReportMethod {
    /// The DM's notification queues (`ReportMethod` 0).
    Queue,
    /// A row of the status table (`ReportMethod` 1).
    Table,
}

impl ReportMethod {
    /// The message's `ReportMethod` number.
    pub fn number(self) -> u8 {
        match self {
            ReportMethod::Queue => 0,
            ReportMethod::Table => 1,
        }
    }
}

impl Default for Config {
    fn default() -> Self {
        Config {
            url: None,
            auth: crate::auth::AuthConfig::default(),
            proxy: crate::transport::ProxyConfig::default(),
            ca_pem: Vec::new(),
            bundled_roots: true,
            allow_plain: false,
            allow_plain_remote: false,
            connect_timeout: Duration::from_secs(10),
            send_timeout: Duration::from_secs(30),
            recv_timeout: Duration::from_secs(30),
            batch_bytes: 1024 * 1024,
            batch_max_age: Duration::from_secs(5),
            batch_sealed: 1,
            gzip_level: 3,
            json_check: true,
            max_destinations: 8,
            retry_max_attempts: 4,
            retry_base: Duration::from_millis(250),
            retry_max_delay: Duration::from_secs(10),
            retry_max_total: Duration::from_secs(30),
            backoff_max: Duration::from_secs(300),
            app: "[none]".to_owned(),
            app_version: None,
            user: "[none]".to_owned(),
            log_level: LogLevel::Warn,
            spool_dir: None,
            spool_max_bytes: 64 * 1024 * 1024,
            spool_max_chunks: 4096,
            spool_policy: crate::spool::FullPolicy::DropOldest,
            spool_key: None,
            spool_write_ahead: false,
            spool_trim_on_open: false,
            replay_per_poll: 8,
            spool_quarantine_max_bytes: None,
            spool_quarantine_max_chunks: SPOOL_QUARANTINE_MAX_CHUNKS,
            ingest_mode: IngestMode::Streaming,
            dm_url: None,
            queued_report: QueuedReport::Failures,
            queued_report_method: ReportMethod::Queue,
            managed_queued_for: Duration::from_secs(900),
            queued_merge_chunks: 16,
        }
    }
}

/// One documented key: name, default shown to users, and what it means.
pub struct KeyDoc {
    /// The key.
    pub key: &'static str,
    /// Default value as text.
    pub default: &'static str,
    /// One line of help.
    pub help: &'static str,
}

/// Every key `set` understands, for the README and for error messages.
pub const KEYS: &[KeyDoc] = &[
    KeyDoc {
        key: "url",
        default: "(required)",
        help: "cluster URL, https://CLUSTER.REGION.kusto.windows.net",
    },
    KeyDoc {
        key: "tls.ca_file",
        default: "(none)",
        help: "PEM file of CA certificates to trust in addition to the bundled roots",
    },
    KeyDoc {
        key: "tls.bundled_roots",
        default: "true",
        help: "trust the Mozilla roots compiled into the library",
    },
    KeyDoc {
        key: "http.allow_plain",
        default: "false",
        help: "allow http:// to loopback hosts (tests, local endpoints)",
    },
    KeyDoc {
        key: "http.allow_plain_remote",
        default: "false",
        help: "allow http:// to other hosts too (a token is never sent there)",
    },
    KeyDoc {
        key: "proxy.url",
        default: "$HTTPS_PROXY",
        help: "http://[user:pass@]host:port, or none (password is secret)",
    },
    KeyDoc {
        key: "proxy.no_proxy",
        default: "$NO_PROXY",
        help: "comma-separated hosts that bypass the proxy",
    },
    KeyDoc {
        key: "timeout.connect_ms",
        default: "10000",
        help: "bound on TCP + TLS connection setup",
    },
    KeyDoc {
        key: "timeout.send_ms",
        default: "30000",
        help: "bound on sending one request",
    },
    KeyDoc {
        key: "timeout.recv_ms",
        default: "30000",
        help: "bound on waiting for and reading one response",
    },
    KeyDoc {
        key: "batch.bytes",
        default: "1048576",
        help: "raw capacity of each destination's batch (1024..4194304)",
    },
    KeyDoc {
        key: "batch.max_age_ms",
        default: "5000",
        help: "poll sends a batch older than this",
    },
    KeyDoc {
        key: "batch.sealed",
        default: "1",
        help: "full batches a destination holds for sending besides the filling one (0..16; 0: one buffer, append waits for poll to send a full batch); append returns KEDGE_QUEUE_FULL beyond",
    },
    KeyDoc {
        key: "gzip.level",
        default: "3",
        help: "gzip level of request bodies, 1 (fastest) .. 9 (smallest)",
    },
    KeyDoc {
        key: "json.check",
        default: "true",
        help: "append checks the JSON syntax of each json record; false (streaming without a spool only): only its size, UTF-8, single line and that it is not blank, and a record the service refuses is found by sending its chunk in halves (multijson is always checked)",
    },
    KeyDoc {
        key: "destinations.max",
        default: "8",
        help: "destinations one client may serve (1..256)",
    },
    KeyDoc {
        key: "retry.max_attempts",
        default: "4",
        help: "attempts of one send, the first included (1..100)",
    },
    KeyDoc {
        key: "retry.base_ms",
        default: "250",
        help: "backoff before the second attempt; doubles, with full jitter",
    },
    KeyDoc {
        key: "retry.max_delay_ms",
        default: "10000",
        help: "cap of one backoff delay inside a send",
    },
    KeyDoc {
        key: "retry.max_total_ms",
        default: "30000",
        help: "bound on one send with all its retries",
    },
    KeyDoc {
        key: "backoff.max_ms",
        default: "300000",
        help: "cap of a destination's backoff between failed sends",
    },
    KeyDoc {
        key: "client.app",
        default: "[none]",
        help: "x-ms-app header: your application's name",
    },
    KeyDoc {
        key: "client.app_version",
        default: "(none)",
        help: "your application's version, added to x-ms-client-version",
    },
    KeyDoc {
        key: "client.user",
        default: "[none]",
        help: "x-ms-user header",
    },
    KeyDoc {
        key: "log.level",
        default: "warn",
        help: "error, warn, info or debug",
    },
    KeyDoc {
        key: "spool.dir",
        default: "(none)",
        help: "spool directory on flash: undelivered chunks are kept there across reboots",
    },
    KeyDoc {
        key: "spool.max_bytes",
        default: "67108864",
        help: "upper bound of the pending chunks on flash (the quarantine has its own bound)",
    },
    KeyDoc {
        key: "spool.max_chunks",
        default: "4096",
        help: "upper bound of chunks in the spool (1..1000000)",
    },
    KeyDoc {
        key: "spool.policy",
        default: "drop-oldest",
        help: "when full: drop-oldest (telemetry) or reject-new (KEDGE_SPOOL_FULL)",
    },
    KeyDoc {
        key: "spool.key_file",
        default: "(none)",
        help: "file with a 32-byte key (raw or 64 hex digits): AES-256-GCM at rest",
    },
    KeyDoc {
        key: "spool.write_ahead",
        default: "false",
        help: "write every chunk to flash before sending it (more flash wear)",
    },
    KeyDoc {
        key: "spool.trim_on_open",
        default: "false",
        help: "at open, drop the oldest chunks beyond lowered limits (else keep them and refuse new ones)",
    },
    KeyDoc {
        key: "spool.replay_per_poll",
        default: "8",
        help: "spooled chunks one poll replays at most (1..1000)",
    },
    KeyDoc {
        key: "spool.quarantine_max_bytes",
        default: "(spool.max_bytes / 8)",
        help: "upper bound of rejected/ and corrupt/ on flash, on top of spool.max_bytes; the oldest go first (0: keep none)",
    },
    KeyDoc {
        key: "spool.quarantine_max_chunks",
        default: "256",
        help: "upper bound of chunks in rejected/ and corrupt/ (0..1000000, also bounds their index in RAM)",
    },
    KeyDoc {
        key: "ingest.mode",
        default: "streaming",
        help: "streaming (POST to the engine), queued (blob upload + DM queue message) or managed (streaming, queued when streaming cannot take it)",
    },
    KeyDoc {
        key: "ingest.dm_url",
        default: "(url with ingest-)",
        help: "data-management endpoint for queued and managed; derived from url by inserting ingest-, except for IP literals and localhost, where it must be set",
    },
    KeyDoc {
        key: "queued.report",
        default: "failures",
        help: "DM reports a queued chunk asks for: none, failures or all (successes too: for tests and low volume)",
    },
    KeyDoc {
        key: "queued.report_method",
        default: "queue",
        help: "where the DM reports: queue (its notification queues; table, a status row per chunk, is not available yet)",
    },
    KeyDoc {
        key: "queued.merge_chunks",
        default: "16",
        help: "queued (and managed, for a table that goes queued): spooled chunks of one destination replayed together as the blocks of one blob, one queue message (1..64; 1: each alone)",
    },
    KeyDoc {
        key: "managed.queued_for_ms",
        default: "900000",
        help: "managed mode: after streaming answers that a table's streaming policy is off, its chunks go queued this long before streaming is tried again",
    },
];

/// A key that others can read protects nothing: refuse it, the way ssh refuses a private key file with loose
/// permissions.
fn check_key_file_private(path: &str) -> Result<(), Error> {
    use std::os::unix::fs::PermissionsExt;
    let meta = std::fs::metadata(path).map_err(|e| {
        Error::new(
            ErrorKind::ConfigInvalidValue,
            format!("spool.key_file '{path}' cannot be read: {e}"),
        )
    })?;
    let mode = meta.permissions().mode();
    if mode & 0o077 != 0 {
        return Err(Error::new(
            ErrorKind::ConfigInvalidValue,
            format!(
                "spool.key_file '{path}' is readable or writable by others (mode {:03o}): chmod 600 it",
                mode & 0o777
            ),
        ));
    }
    Ok(())
}

/// The one reading of a yes/no value, for every config key and connection-string keyword: `true`/`false`,
/// `yes`/`no` or `1`/`0`, in any case, surrounding spaces ignored; `None` for anything else (`on`, `t`, ``), which
/// the caller refuses by name. The words are the connection strings' documented ones (`Fed=True`).
pub(crate) fn parse_bool_word(v: &str) -> Option<bool> {
    let v = v.trim();
    let is = |w: &str| v.eq_ignore_ascii_case(w);
    if is("true") || is("yes") || v == "1" {
        Some(true)
    } else if is("false") || is("no") || v == "0" {
        Some(false)
    } else {
        None
    }
}

fn parse_bool(key: &str, v: &str) -> Result<bool, Error> {
    parse_bool_word(v).ok_or_else(|| invalid(key, v, "expected true or false (yes/no, 1/0)"))
}

fn parse_u64(key: &str, v: &str, min: u64, max: u64) -> Result<u64, Error> {
    let n: u64 = v
        .trim()
        .parse()
        .map_err(|_| invalid(key, v, "expected a whole number"))?;
    if n < min || n > max {
        return Err(invalid(key, v, &format!("must be between {min} and {max}")));
    }
    Ok(n)
}

fn parse_ms(key: &str, v: &str, min: u64, max: u64) -> Result<Duration, Error> {
    parse_u64(key, v, min, max).map(Duration::from_millis)
}

fn invalid(key: &str, value: &str, why: &str) -> Error {
    // Values of secret keys never reach a message.
    let shown = value;
    Error::new(
        ErrorKind::ConfigInvalidValue,
        format!("config key '{key}': value '{shown}' is invalid: {why}"),
    )
}

fn header_text(key: &str, v: &str) -> Result<String, Error> {
    if v.is_empty() || v.len() > 256 || !v.bytes().all(|b| (0x20..0x7f).contains(&b)) {
        return Err(invalid(
            key,
            v,
            "must be 1..256 printable ASCII characters (it is sent as an HTTP header)",
        ));
    }
    Ok(v.to_owned())
}

const DAY_MS: u64 = 24 * 3600 * 1000;

impl Config {
    /// Sets one key. Unknown keys and bad values are refused with a message naming the key.
    pub fn set(&mut self, key: &str, value: &str) -> Result<(), Error> {
        // Credentials and connection strings are the auth module's, the proxy the transport's: they know their
        // secrets.
        if self.auth.set(key, value)? || self.proxy.set(key, value)? {
            return Ok(());
        }
        match key {
            "url" => {
                let v = value.trim().trim_end_matches('/');
                crate::wire::ClusterUrl::parse(v)?;
                self.url = Some(v.to_owned());
            }
            "tls.ca_file" => {
                let pem = std::fs::read(value).map_err(|e| {
                    Error::new(
                        ErrorKind::TlsConfig,
                        format!("tls.ca_file '{value}' cannot be read: {e}"),
                    )
                })?;
                crate::certs::parse_ca_pem(&pem)?;
                self.ca_pem.extend_from_slice(&pem);
                self.ca_pem.push(b'\n');
            }
            "tls.bundled_roots" => self.bundled_roots = parse_bool(key, value)?,
            "http.allow_plain" => self.allow_plain = parse_bool(key, value)?,
            "http.allow_plain_remote" => self.allow_plain_remote = parse_bool(key, value)?,
            "timeout.connect_ms" => self.connect_timeout = parse_ms(key, value, 1, DAY_MS)?,
            "timeout.send_ms" => self.send_timeout = parse_ms(key, value, 1, DAY_MS)?,
            "timeout.recv_ms" => self.recv_timeout = parse_ms(key, value, 1, DAY_MS)?,
            "batch.bytes" => {
                self.batch_bytes = parse_u64(
                    key,
                    value,
                    MIN_BATCH_BYTES as u64,
                    MAX_REQUEST_RAW_BYTES as u64,
                )? as usize
            }
            "batch.max_age_ms" => self.batch_max_age = parse_ms(key, value, 0, DAY_MS)?,
            "batch.sealed" => self.batch_sealed = parse_u64(key, value, 0, 16)? as usize,
            "gzip.level" => self.gzip_level = parse_u64(key, value, 1, 9)? as u8,
            "json.check" => self.json_check = parse_bool(key, value)?,
            "destinations.max" => {
                self.max_destinations = parse_u64(key, value, 1, MAX_DESTINATIONS as u64)? as usize
            }
            "retry.max_attempts" => self.retry_max_attempts = parse_u64(key, value, 1, 100)? as u32,
            "retry.base_ms" => self.retry_base = parse_ms(key, value, 0, DAY_MS)?,
            "retry.max_delay_ms" => self.retry_max_delay = parse_ms(key, value, 0, DAY_MS)?,
            "retry.max_total_ms" => self.retry_max_total = parse_ms(key, value, 0, DAY_MS)?,
            "backoff.max_ms" => self.backoff_max = parse_ms(key, value, 0, DAY_MS)?,
            "client.app" => self.app = header_text(key, value)?,
            "client.app_version" => self.app_version = Some(header_text(key, value)?),
            "client.user" => self.user = header_text(key, value)?,
            "log.level" => {
                self.log_level = match value.to_ascii_lowercase().as_str() {
                    "error" => LogLevel::Error,
                    "warn" | "warning" => LogLevel::Warn,
                    "info" => LogLevel::Info,
                    "debug" => LogLevel::Debug,
                    _ => return Err(invalid(key, value, "expected error, warn, info or debug")),
                }
            }
            "spool.dir" => {
                if value.is_empty() {
                    return Err(invalid(key, value, "give a directory path"));
                }
                self.spool_dir = Some(value.into());
            }
            "spool.max_bytes" => self.spool_max_bytes = parse_u64(key, value, 64 * 1024, 1 << 50)?,
            "spool.max_chunks" => {
                self.spool_max_chunks = parse_u64(key, value, 1, 1_000_000)? as u32
            }
            "spool.policy" => {
                self.spool_policy = match value {
                    "drop-oldest" => crate::spool::FullPolicy::DropOldest,
                    "reject-new" => crate::spool::FullPolicy::RejectNew,
                    _ => return Err(invalid(key, value, "expected drop-oldest or reject-new")),
                }
            }
            "spool.key_file" => {
                check_key_file_private(value)?;
                let bytes = std::fs::read(value).map_err(|e| {
                    Error::new(
                        ErrorKind::ConfigInvalidValue,
                        format!("spool.key_file '{value}' cannot be read: {e}"),
                    )
                })?;
                self.spool_key = Some(parse_key(&bytes)?);
            }
            "spool.write_ahead" => self.spool_write_ahead = parse_bool(key, value)?,
            "spool.trim_on_open" => self.spool_trim_on_open = parse_bool(key, value)?,
            "spool.replay_per_poll" => {
                self.replay_per_poll = parse_u64(key, value, 1, 1000)? as u32
            }
            "spool.quarantine_max_bytes" => {
                self.spool_quarantine_max_bytes = Some(parse_u64(key, value, 0, 1 << 50)?)
            }
            "spool.quarantine_max_chunks" => {
                self.spool_quarantine_max_chunks = parse_u64(key, value, 0, 1_000_000)? as u32
            }
            "ingest.mode" => {
                self.ingest_mode = match value {
                    "streaming" => IngestMode::Streaming,
                    "queued" => IngestMode::Queued,
                    "managed" => IngestMode::Managed,
                    _ => return Err(invalid(key, value, "expected streaming, queued or managed")),
                }
            }
            "ingest.dm_url" => {
                let v = value.trim().trim_end_matches('/');
                crate::wire::DmUrl::parse(v)?;
                self.dm_url = Some(v.to_owned());
            }
            "queued.report" => {
                self.queued_report = match value {
                    "none" => QueuedReport::None,
                    "failures" => QueuedReport::Failures,
                    "all" => QueuedReport::All,
                    _ => return Err(invalid(key, value, "expected none, failures or all")),
                }
            }
            "managed.queued_for_ms" => self.managed_queued_for = parse_ms(key, value, 0, DAY_MS)?,
            "queued.merge_chunks" => {
                self.queued_merge_chunks = match value.parse::<usize>() {
                    Ok(n) if (1..=64).contains(&n) => n,
                    _ => return Err(invalid(key, value, "expected 1..64")),
                }
            }
            "queued.report_method" => {
                self.queued_report_method = match value {
                    "queue" => ReportMethod::Queue,
                    "table" => ReportMethod::Table,
                    _ => return Err(invalid(key, value, "expected queue or table")),
                }
            }
            _ => {
                return Err(Error::new(
                    ErrorKind::ConfigUnknownKey,
                    format!(
                        "unknown config key '{key}' (see the README's list of configuration keys)"
                    ),
                ))
            }
        }
        Ok(())
    }

    /// Adds CA certificates from PEM text in memory.
    pub fn add_ca_pem(&mut self, pem: &[u8]) -> Result<(), Error> {
        crate::certs::parse_ca_pem(pem)?;
        self.ca_pem.extend_from_slice(pem);
        self.ca_pem.push(b'\n');
        Ok(())
    }

    /// Checks that the settings make a client: a URL, a transport the security rules allow, a trust store.
    pub fn validate(&self) -> Result<crate::wire::ClusterUrl, Error> {
        let from_connection_string = self.auth.connection_string().map(|c| c.cluster.as_str());
        let url = self.url.as_deref().or(from_connection_string).ok_or_else(|| {
            Error::new(
                ErrorKind::ConfigIncomplete,
                "config key 'url' is not set: give the cluster URL (or a connection_string with Data Source)",
            )
        })?;
        let cluster = crate::wire::ClusterUrl::parse(url)?;
        if !cluster.https {
            if !self.allow_plain {
                return Err(Error::new(
                    ErrorKind::InsecureTransport,
                    format!("'{url}' is plain http: use https, or set http.allow_plain=true for a loopback test endpoint"),
                ));
            }
            if !cluster.is_loopback() && !self.allow_plain_remote {
                return Err(Error::new(
                    ErrorKind::InsecureTransport,
                    format!("'{url}' is plain http to a host that is not loopback: use https (or set http.allow_plain_remote=true, never with a token)"),
                ));
            }
            if !cluster.is_loopback() && self.auth.method().is_some() {
                return Err(Error::new(
                    ErrorKind::InsecureTransport,
                    format!(
                        "refusing to send a token over plain http to '{}': use https",
                        cluster.host
                    ),
                ));
            }
        } else if !self.bundled_roots && self.ca_pem.is_empty() {
            return Err(Error::new(
                ErrorKind::TlsConfig,
                "no certificate to trust: tls.bundled_roots=false needs tls.ca_file or a CA in memory",
            ));
        }
        if self.retry_max_delay < self.retry_base {
            return Err(Error::new(
                ErrorKind::ConfigInvalidValue,
                "retry.max_delay_ms must not be smaller than retry.base_ms",
            ));
        }
        if self.ingest_mode != IngestMode::Streaming {
            self.dm_url(&cluster)?;
        }
        Ok(cluster)
    }

    /// The data-management endpoint: `ingest.dm_url` as given, else `url` with `ingest-` inserted. An IP literal
    /// or localhost cluster has no derivable DM: then `ingest.dm_url` is required.
    pub fn dm_url(&self, cluster: &crate::wire::ClusterUrl) -> Result<crate::wire::DmUrl, Error> {
        if let Some(u) = &self.dm_url {
            return crate::wire::DmUrl::parse(u);
        }
        crate::wire::DmUrl::derive(cluster).ok_or_else(|| {
            Error::new(
                ErrorKind::ConfigIncomplete,
                format!(
                    "ingest.mode needs the data-management endpoint, which cannot be derived from '{}' (an IP address or localhost): set ingest.dm_url",
                    cluster.base()
                ),
            )
        })
    }

    /// Upper bound of the spool's quarantine (`rejected/` and `corrupt/`) in bytes: as set, or an eighth of
    /// `spool.max_bytes`.
    pub fn spool_quarantine_max_bytes(&self) -> u64 {
        self.spool_quarantine_max_bytes
            .unwrap_or(self.spool_max_bytes / 8)
    }

    /// The transport's share of the settings: timeouts, trust store, plain-http rules, proxy.
    pub fn transport_config(&self) -> crate::transport::TransportConfig<'_> {
        crate::transport::TransportConfig {
            connect_timeout: self.connect_timeout,
            send_timeout: self.send_timeout,
            recv_timeout: self.recv_timeout,
            ca_pem: &self.ca_pem,
            bundled_roots: self.bundled_roots,
            allow_plain: self.allow_plain,
            allow_plain_remote: self.allow_plain_remote,
            proxy: &self.proxy,
        }
    }

    /// Largest gzip body a batch of `batch_bytes` can become (stored blocks in the worst case, plus framing).
    pub fn wire_capacity(&self) -> usize {
        crate::gzip::compressed_bound(self.batch_bytes)
    }

    /// Heap bytes a client built from this config holds at most, whatever the input and however long an outage:
    /// `1 + batch.sealed` batch buffers per destination, one compressed-body buffer, the compressor's state, a response buffer and
    /// a fixed allowance for TLS and HTTP state.
    pub fn memory_bound(&self) -> u64 {
        let batches =
            self.max_destinations as u64 * (1 + self.batch_sealed as u64) * self.batch_bytes as u64;
        let wire = self.wire_capacity() as u64;
        let compressor = crate::gzip::COMPRESSOR_STATE_BYTES as u64;
        batches
            + wire
            + compressor
            + 2 * RESPONSE_BODY_BYTES as u64
            + self.ca_pem.len() as u64 * 2
            + FIXED_OVERHEAD_BYTES as u64
            + self.spool_memory()
            + match self.ingest_mode {
                IngestMode::Streaming => 0,
                IngestMode::Queued => crate::sink::queued::QUEUED_BYTES,
                // A second HTTP agent (engine and storage each have one) besides the queued sink's buffers.
                IngestMode::Managed => crate::sink::queued::QUEUED_BYTES + MANAGED_AGENT_BYTES,
            }
            + if self.auth.method().is_some() {
                AUTH_BYTES
            } else {
                0
            }
    }

    /// The spool's share: its index (one entry per chunk), the index of its quarantine, the scratch that verifies
    /// chunks on open, and with encryption one sealed copy of a chunk while it is written.
    fn spool_memory(&self) -> u64 {
        if self.spool_dir.is_none() {
            return 0;
        }
        let sealing = if self.spool_key.is_some() {
            self.wire_capacity() as u64
        } else {
            0
        };
        SPOOL_FIXED_BYTES
            + self.spool_max_chunks as u64 * SPOOL_BYTES_PER_CHUNK
            + self.spool_quarantine_max_chunks as u64 * SPOOL_BYTES_PER_QUARANTINED
            + sealing
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_set_of_yes_no_words_for_every_key() {
        for (v, want) in [
            ("true", true),
            ("True", true),
            (" YES ", true),
            ("1", true),
            ("false", false),
            ("FALSE", false),
            ("no", false),
            ("0", false),
        ] {
            assert_eq!(parse_bool_word(v), Some(want), "{v:?}");
        }
        for v in ["on", "off", "t", "f", "", "2", "truee", "y"] {
            assert_eq!(parse_bool_word(v), None, "{v:?}");
        }
        let mut c = Config::default();
        let e = c.set("http.allow_plain", "on").unwrap_err();
        assert_eq!(e.kind, ErrorKind::ConfigInvalidValue);
        assert!(e.message.contains("http.allow_plain"), "{}", e.message);
        c.set("http.allow_plain", "Yes").unwrap();
        c.set("auth.metadata", "0").unwrap();
        assert!(c.set("auth.send_x5c", "off").is_err());
        let cs = crate::auth::parse_connection_string(
            "Data Source=https://c.kusto.windows.net;Fed=True;User Token=t",
        )
        .unwrap();
        assert!(cs.credential != crate::auth::CredentialSpec::None);
        assert!(crate::auth::parse_connection_string(
            "Data Source=https://c.kusto.windows.net;Fed=on"
        )
        .is_err());
    }

    #[test]
    fn queued_mode_needs_a_dm_it_can_find() {
        let mut c = Config::default();
        c.set("url", "http://127.0.0.1:8080").unwrap();
        c.set("http.allow_plain", "true").unwrap();
        assert_eq!(c.ingest_mode, IngestMode::Streaming);
        c.validate().unwrap();
        c.set("ingest.mode", "queued").unwrap();
        let e = c.validate().unwrap_err();
        assert_eq!(e.kind, ErrorKind::ConfigIncomplete);
        assert!(e.message.contains("ingest.dm_url"), "{}", e.message);
        c.set("ingest.dm_url", "http://127.0.0.1:9090/").unwrap();
        let cluster = c.validate().unwrap();
        assert_eq!(c.dm_url(&cluster).unwrap().base, "http://127.0.0.1:9090");
        let mut c = Config::default();
        c.set("url", "https://c.westeurope.kusto.windows.net")
            .unwrap();
        c.set("ingest.mode", "queued").unwrap();
        let cluster = c.validate().unwrap();
        assert_eq!(
            c.dm_url(&cluster).unwrap().base,
            "https://ingest-c.westeurope.kusto.windows.net"
        );
        assert!(c.set("ingest.mode", "batch").is_err());
        assert!(c.set("ingest.dm_url", "nope").is_err());
        assert_eq!(c.queued_report.level(), 0);
        c.set("queued.report", "none").unwrap();
        assert_eq!(c.queued_report.level(), 1);
        c.set("queued.report", "all").unwrap();
        assert_eq!(c.queued_report.level(), 2);
        assert!(c.set("queued.report", "some").is_err());
        assert_eq!(c.queued_merge_chunks, 16);
        c.set("queued.merge_chunks", "1").unwrap();
        assert_eq!(c.queued_merge_chunks, 1);
        for bad in ["0", "65", "x"] {
            assert!(c.set("queued.merge_chunks", bad).is_err(), "{bad}");
        }
        c.set("queued.report_method", "table").unwrap();
        assert_eq!(c.queued_report_method.number(), 1);
        assert!(c.set("queued.report_method", "both").is_err());
        c.set("queued.report_method", "queue").unwrap();
        assert_eq!(c.queued_report_method.number(), 0);
        assert!(c.set("queued.report_method", "both").is_err());
        // The queued sink's buffers are part of the bound.
        let streaming = Config::default().memory_bound();
        assert!(c.memory_bound() > streaming);
    }

    #[test]
    fn unknown_key_is_refused_with_its_name() {
        let mut c = Config::default();
        let e = c.set("batch.size", "10").unwrap_err();
        assert_eq!(e.kind, ErrorKind::ConfigUnknownKey);
        assert!(e.message.contains("batch.size"));
    }

    #[test]
    fn batch_bytes_cannot_exceed_the_service_limit() {
        let mut c = Config::default();
        assert!(c.set("batch.bytes", "4194304").is_ok());
        let e = c.set("batch.bytes", "4194305").unwrap_err();
        assert_eq!(e.kind, ErrorKind::ConfigInvalidValue);
        assert!(c.set("batch.bytes", "-1").is_err());
        assert!(c.set("batch.bytes", "12k").is_err());
    }

    #[test]
    fn token_value_never_appears_in_errors_or_debug() {
        let mut c = Config::default();
        let e = c.set("auth.token", "sec ret").unwrap_err();
        assert!(!e.message.contains("sec ret"));
        c.set("auth.token", "s3cr3t-value").unwrap();
        c.set("proxy.url", "http://gw:px-s3cr3t@proxy.local:3128")
            .unwrap();
        let d = format!("{c:?}");
        assert!(!d.contains("s3cr3t"), "{d}");
        assert!(d.contains("proxy.local:3128"), "{d}");
        let e = c.set("proxy.url", "ftp://gw:s3cr3t@x").unwrap_err();
        assert!(!e.message.contains("s3cr3t"), "{}", e.message);
    }

    #[test]
    fn plain_http_needs_opt_in_and_loopback() {
        let mut c = Config::default();
        c.set("url", "http://127.0.0.1:8080").unwrap();
        assert_eq!(c.validate().unwrap_err().kind, ErrorKind::InsecureTransport);
        c.set("http.allow_plain", "true").unwrap();
        assert!(c.validate().is_ok());
        c.set("url", "http://example.com").unwrap();
        assert_eq!(c.validate().unwrap_err().kind, ErrorKind::InsecureTransport);
        c.set("http.allow_plain_remote", "true").unwrap();
        assert!(c.validate().is_ok());
        c.set("auth.token", "abc").unwrap();
        assert_eq!(c.validate().unwrap_err().kind, ErrorKind::InsecureTransport);
    }

    #[test]
    fn the_transport_config_carries_the_transport_keys() {
        // A transport built without a Config has the same defaults.
        let (d, t) = (
            Config::default(),
            crate::transport::TransportConfig::default(),
        );
        let d = d.transport_config();
        assert_eq!(
            (d.connect_timeout, d.send_timeout, d.recv_timeout),
            (t.connect_timeout, t.send_timeout, t.recv_timeout)
        );
        assert_eq!(
            (
                d.bundled_roots,
                d.allow_plain,
                d.allow_plain_remote,
                d.ca_pem
            ),
            (
                t.bundled_roots,
                t.allow_plain,
                t.allow_plain_remote,
                t.ca_pem
            )
        );
        let mut c = Config::default();
        for (k, v) in [
            ("timeout.connect_ms", "1500"),
            ("timeout.send_ms", "2500"),
            ("timeout.recv_ms", "3500"),
            ("tls.bundled_roots", "false"),
            ("http.allow_plain", "true"),
            ("http.allow_plain_remote", "true"),
            ("proxy.url", "http://proxy.plant.local:3128"),
        ] {
            c.set(k, v).unwrap();
        }
        c.ca_pem = b"pem".to_vec();
        let t = c.transport_config();
        assert_eq!(t.connect_timeout, Duration::from_millis(1500));
        assert_eq!(t.send_timeout, Duration::from_millis(2500));
        assert_eq!(t.recv_timeout, Duration::from_millis(3500));
        assert_eq!(t.ca_pem, b"pem");
        assert!(!t.bundled_roots && t.allow_plain && t.allow_plain_remote);
        assert_eq!(
            t.proxy.proxy().unwrap().unwrap().host(),
            "proxy.plant.local"
        );
    }

    #[test]
    fn missing_url_is_incomplete() {
        assert_eq!(
            Config::default().validate().unwrap_err().kind,
            ErrorKind::ConfigIncomplete
        );
    }

    #[test]
    fn quarantine_limits_default_to_an_eighth_of_the_spool_and_count_in_the_memory_bound() {
        let mut c = Config::default();
        assert_eq!(c.spool_quarantine_max_bytes(), 8 * 1024 * 1024);
        c.set("spool.max_bytes", "800000").unwrap();
        assert_eq!(c.spool_quarantine_max_bytes(), 100_000);
        c.set("spool.quarantine_max_bytes", "0").unwrap();
        assert_eq!(c.spool_quarantine_max_bytes(), 0);
        c.set("spool.quarantine_max_bytes", "5000").unwrap();
        c.set("spool.max_bytes", "8000000").unwrap();
        assert_eq!(
            c.spool_quarantine_max_bytes(),
            5000,
            "set explicitly: no longer follows"
        );
        assert!(c.set("spool.quarantine_max_bytes", "-1").is_err());

        assert_eq!(c.spool_quarantine_max_chunks, 256);
        c.set("spool.dir", "/data/spool").unwrap();
        let a = c.memory_bound();
        c.set("spool.quarantine_max_chunks", "1256").unwrap();
        assert_eq!(c.memory_bound() - a, 1000 * SPOOL_BYTES_PER_QUARANTINED);
        c.set("spool.quarantine_max_chunks", "0").unwrap();
        let e = c.set("spool.quarantine_max_chunks", "1000001").unwrap_err();
        assert_eq!(e.kind, ErrorKind::ConfigInvalidValue);
        assert!(e.message.contains("spool.quarantine_max_chunks"));
    }

    #[test]
    fn memory_bound_grows_with_destinations_and_batch_size() {
        let mut c = Config::default();
        let a = c.memory_bound();
        c.set("destinations.max", "16").unwrap();
        let b = c.memory_bound();
        // Eight more lanes of 1 + batch.sealed (1) buffers of 1 MiB.
        assert_eq!(b - a, 2 * 8 * 1024 * 1024);
        c.set("batch.sealed", "3").unwrap();
        assert_eq!(c.memory_bound() - b, 2 * 16 * 1024 * 1024);
        c.set("batch.sealed", "0").unwrap();
        assert_eq!(
            c.memory_bound(),
            a,
            "16 lanes of one buffer hold what 8 lanes of two do"
        );
        assert!(c.set("batch.sealed", "17").is_err());
    }

    #[test]
    fn gzip_level_is_1_to_9_and_3_by_default() {
        let mut c = Config::default();
        assert_eq!(c.gzip_level, 3);
        c.set("gzip.level", "9").unwrap();
        assert_eq!(c.gzip_level, 9);
        for bad in ["0", "10", "x", ""] {
            assert!(c.set("gzip.level", bad).is_err(), "{bad}");
        }
        assert_eq!(c.gzip_level, 9);
    }

    #[test]
    fn json_check_is_on_by_default_and_a_bool() {
        let mut c = Config::default();
        assert!(c.json_check);
        c.set("json.check", "false").unwrap();
        assert!(!c.json_check);
        assert!(c.set("json.check", "maybe").is_err());
        assert!(!c.json_check, "a refused value changes nothing");
    }
}
