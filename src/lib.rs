//! kusto-edge's C library: the `extern "C"` API over the safe core (`kusto-edge-core`, in `core/`).
//!
//! This crate is the only one in the workspace with `extern "C"`, raw pointers and `unsafe`; the core forbids it.
//! Its only crate type is `staticlib`: `cargo build --release` gives the LTO-optimised `libkusto_edge.a`, and
//! cbindgen reads this file to make `include/kusto_edge.h`.
//!
//! Conventions (after rustls-ffi): opaque handles; every function behind a panic boundary that turns a panic into
//! `KEDGE_PANIC`; every pointer checked for NULL (`KEDGE_NULL_PARAMETER`); outputs through out-pointers, written
//! only on success; every `_new` has a `_free` that accepts NULL; messages copied into the caller's buffers,
//! truncated and always NUL-terminated.
#![warn(missing_docs)]
#![allow(non_camel_case_types)]
#![deny(unsafe_op_in_unsafe_fn)]
#![warn(clippy::undocumented_unsafe_blocks)]

use std::ffi::{c_char, c_void, CStr};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::Arc;

use zeroize::Zeroize;

use kusto_edge_core::client::{Client, DeliveryReport, Outcome};
use kusto_edge_core::config::{Config, LogLevel};
use kusto_edge_core::error::{Error, ErrorKind};

/// Result of every fallible call. Numbers are fixed and never reused.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum kedge_result {
    /// Success.
    KEDGE_OK = 0,
    /// A required pointer argument was NULL.
    KEDGE_NULL_PARAMETER = 1,
    /// An argument is malformed: a string that is not UTF-8, an unknown format, a name with control characters.
    KEDGE_INVALID_ARGUMENT = 2,
    /// `kedge_config_set` with a key that does not exist.
    KEDGE_CONFIG_UNKNOWN_KEY = 3,
    /// A config value that does not parse or is out of range.
    KEDGE_CONFIG_INVALID_VALUE = 4,
    /// `kedge_client_new` without a required key (such as "url").
    KEDGE_CONFIG_INCOMPLETE = 5,
    /// Plain http where it is not allowed, or a token that would travel over plain http.
    KEDGE_INSECURE_TRANSPORT = 6,
    /// CA certificates unreadable, malformed or absent.
    KEDGE_TLS_CONFIG = 7,
    /// A destination id this client does not have.
    KEDGE_INVALID_DESTINATION = 8,
    /// The client already has `destinations.max` destinations.
    KEDGE_TOO_MANY_DESTINATIONS = 9,
    /// A record larger than `batch.bytes`: it can never be sent. The caller still has it.
    KEDGE_RECORD_TOO_LARGE = 10,
    /// A record the service can never take: empty, not UTF-8 in a text format, a line break in a `json` record.
    KEDGE_INVALID_RECORD = 11,
    /// Network trouble, throttling or 5xx outlasted the retries. Buffered data is kept; a record passed to this
    /// call was not taken.
    KEDGE_TRANSIENT_FAILURE = 12,
    /// The destination is backing off after failures: nothing was sent now; data is kept; try again later.
    KEDGE_BACKING_OFF = 13,
    /// The service refused the data permanently: that chunk was dropped and reported.
    KEDGE_DATA_REJECTED = 14,
    /// Table, database, mapping or streaming policy missing, or no streaming endpoint: data is kept.
    KEDGE_TARGET_NOT_READY = 15,
    /// 401/403: the token is missing, expired or lacks permission. Data is kept.
    KEDGE_AUTH_REFUSED = 16,
    /// The spool is full and refuses new data.
    KEDGE_SPOOL_FULL = 17,
    /// The spool's storage failed.
    KEDGE_SPOOL_IO = 18,
    /// A client function was called from inside one of that client's callbacks.
    KEDGE_REENTRANT_CALL = 19,
    /// Not delivered yet, but durable in the spool: it will be replayed by `kedge_poll`/`kedge_flush`.
    KEDGE_SPOOLED = 20,
    /// The destination's lane is full (its batch and `batch.sealed` chunks wait to be sent): the record was NOT
    /// taken. Call `kedge_poll` (which sends) and append the record again. Never returned for another reason.
    KEDGE_QUEUE_FULL = 21,
    /// An internal invariant failed (a bug: please report it).
    KEDGE_INTERNAL = 98,
    /// A panic was caught at the C boundary (a bug: please report it). The client may still be used.
    KEDGE_PANIC = 99,
}

/// The one table of result codes: each `ErrorKind`, its C code and its text. The C enum above is written out
/// because cbindgen reads it; everything else comes from this table, and the table is checked against both enums
/// when the crate compiles: each pair's numbers must be equal, and the conversions it generates are exhaustive
/// matches both ways, so a code added to `ErrorKind` or to `kedge_result` without a row here does not build.
macro_rules! result_codes {
    ($( $kind:ident => $code:ident, $text:literal; )*) => {
        $( const _: () = assert!(ErrorKind::$kind as u32 == kedge_result::$code as u32); )*

        impl From<ErrorKind> for kedge_result {
            fn from(k: ErrorKind) -> Self {
                match k {
                    $( ErrorKind::$kind => kedge_result::$code, )*
                }
            }
        }

        impl kedge_result {
            /// Every code, `KEDGE_OK` first, in the table's order.
            pub const ALL: &'static [kedge_result] = &[kedge_result::KEDGE_OK, $( kedge_result::$code, )*];

            /// The class of a failure code; `None` for `KEDGE_OK`.
            pub fn kind(self) -> Option<ErrorKind> {
                match self {
                    kedge_result::KEDGE_OK => None,
                    $( kedge_result::$code => Some(ErrorKind::$kind), )*
                }
            }

            /// What `kedge_result_str` says about it.
            pub fn text(self) -> &'static CStr {
                match self {
                    kedge_result::KEDGE_OK => c"ok",
                    $( kedge_result::$code => $text, )*
                }
            }
        }
    };
}

/// The C mirror of a core enum, checked as [`result_codes`] checks the results: equal numbers, exhaustive
/// conversions both ways.
macro_rules! mirrored {
    ($core:ident => $c:ident { $( $v:ident => $cv:ident, )* }) => {
        $( const _: () = assert!($core::$v as u32 == $c::$cv as u32); )*

        impl From<$core> for $c {
            fn from(v: $core) -> Self {
                match v {
                    $( $core::$v => $c::$cv, )*
                }
            }
        }

        impl From<$c> for $core {
            fn from(v: $c) -> Self {
                match v {
                    $( $c::$cv => $core::$v, )*
                }
            }
        }
    };
}

mirrored!(Outcome => kedge_outcome {
    Acknowledged => KEDGE_OUTCOME_ACKNOWLEDGED,
    Rejected => KEDGE_OUTCOME_REJECTED,
    Failed => KEDGE_OUTCOME_FAILED,
    Spooled => KEDGE_OUTCOME_SPOOLED,
    Dropped => KEDGE_OUTCOME_DROPPED,
    Queued => KEDGE_OUTCOME_QUEUED,
    Ingested => KEDGE_OUTCOME_INGESTED,
});

mirrored!(LogLevel => kedge_log_level {
    Error => KEDGE_LOG_ERROR,
    Warn => KEDGE_LOG_WARN,
    Info => KEDGE_LOG_INFO,
    Debug => KEDGE_LOG_DEBUG,
});

result_codes! {
    NullParameter => KEDGE_NULL_PARAMETER, c"a required pointer argument was NULL";
    InvalidArgument => KEDGE_INVALID_ARGUMENT, c"invalid argument";
    ConfigUnknownKey => KEDGE_CONFIG_UNKNOWN_KEY, c"unknown configuration key";
    ConfigInvalidValue => KEDGE_CONFIG_INVALID_VALUE, c"invalid configuration value";
    ConfigIncomplete => KEDGE_CONFIG_INCOMPLETE, c"configuration incomplete";
    InsecureTransport => KEDGE_INSECURE_TRANSPORT, c"insecure transport refused";
    TlsConfig => KEDGE_TLS_CONFIG, c"TLS configuration error";
    InvalidDestination => KEDGE_INVALID_DESTINATION, c"no such destination";
    TooManyDestinations => KEDGE_TOO_MANY_DESTINATIONS, c"too many destinations";
    RecordTooLarge => KEDGE_RECORD_TOO_LARGE, c"record too large";
    InvalidRecord => KEDGE_INVALID_RECORD, c"invalid record";
    TransientFailure => KEDGE_TRANSIENT_FAILURE, c"transient failure: data kept, try again later";
    BackingOff => KEDGE_BACKING_OFF, c"destination backing off: data kept, try again later";
    DataRejected => KEDGE_DATA_REJECTED, c"data rejected permanently by the service";
    TargetNotReady => KEDGE_TARGET_NOT_READY, c"target not ready: table, database, mapping or streaming policy missing";
    AuthRefused => KEDGE_AUTH_REFUSED, c"authentication refused";
    SpoolFull => KEDGE_SPOOL_FULL, c"spool full";
    SpoolIo => KEDGE_SPOOL_IO, c"spool storage error";
    ReentrantCall => KEDGE_REENTRANT_CALL, c"client function called from its own callback";
    Spooled => KEDGE_SPOOLED, c"not delivered yet, durable in the spool";
    QueueFull => KEDGE_QUEUE_FULL, c"lane full: record not taken, call kedge_poll and append it again";
    Internal => KEDGE_INTERNAL, c"internal error";
    Panic => KEDGE_PANIC, c"panic caught at the C boundary";
}

/// Log levels passed to the log callback.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum kedge_log_level {
    /// Failures the caller must know about.
    KEDGE_LOG_ERROR = 1,
    /// Handled trouble: retries, lost replies.
    KEDGE_LOG_WARN = 2,
    /// One line per chunk.
    KEDGE_LOG_INFO = 3,
    /// Everything.
    KEDGE_LOG_DEBUG = 4,
}

/// The final word on a chunk in a delivery report.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum kedge_outcome {
    /// The service answered 200.
    KEDGE_OUTCOME_ACKNOWLEDGED = 0,
    /// The service refused the data permanently; the chunk was dropped.
    KEDGE_OUTCOME_REJECTED = 1,
    /// Not delivered for now; the chunk is kept in RAM and retried.
    KEDGE_OUTCOME_FAILED = 2,
    /// Not delivered for now; the chunk is durable in the spool and will be replayed.
    KEDGE_OUTCOME_SPOOLED = 3,
    /// The full spool dropped chunks to make room (spool.policy=drop-oldest); `records` says how many records.
    KEDGE_OUTCOME_DROPPED = 4,
    /// Queued ingestion (ingest.mode=queued): the blob is uploaded and the data-management service's queue has
    /// its message; the service ingests it within minutes. `is_final` is 0: a later report may follow when status
    /// tracking is on, and with queued.report=none this is the chunk's last report. The chunk has left RAM and
    /// the spool.
    KEDGE_OUTCOME_QUEUED = 5,
    /// Queued ingestion with queued.report=all: the data-management service reports the chunk ingested
    /// (final). A failure it reports is a final `KEDGE_OUTCOME_REJECTED` with its error code in `message`.
    KEDGE_OUTCOME_INGESTED = 6,
}

/// A configuration under construction. Create with `kedge_config_new`, fill with `kedge_config_set*`, pass to
/// `kedge_client_new` (which copies it), free with `kedge_config_free`. Not thread-safe while being changed.
pub struct kedge_config {
    _private: [u8; 0],
}

/// A client. Create with `kedge_client_new`, free with `kedge_client_free`. All functions taking a client may be
/// called from several threads at once. `kedge_append`, `kedge_append_lines`, `kedge_client_add_destination`,
/// `kedge_client_stats` and `kedge_client_last_error` never wait for the network, the flash or another thread's send. `kedge_poll`,
/// `kedge_flush`, `kedge_flush_timeout` and `kedge_flush_to_spool` do the sending, one thread at a time:
/// `kedge_poll` returns at once when another thread is sending, the flushes wait for it within their bound.
/// Callbacks run on the thread that sends, inside those calls; from a callback, `kedge_append`,
/// `kedge_append_lines` and `kedge_client_add_destination` work and the sending calls return `KEDGE_REENTRANT_CALL`.
pub struct kedge_client {
    _private: [u8; 0],
}

/// What happened to one chunk, passed to the delivery callback. Pointers are valid only during the callback.
#[repr(C)]
pub struct kedge_delivery_report {
    /// Destination id from `kedge_client_add_destination`; `UINT32_MAX` for a spooled chunk of a destination not
    /// added in this run, and for `KEDGE_OUTCOME_DROPPED`.
    pub destination: u32,
    /// The chunk's stable id: a 36-character UUID, NUL-terminated. Also in `x-ms-client-request-id`. Empty for
    /// `KEDGE_OUTCOME_DROPPED`, which may cover several chunks.
    pub chunk_id: *const c_char,
    /// Records in the chunk.
    pub records: u64,
    /// Raw (uncompressed) bytes.
    pub raw_bytes: u64,
    /// Bytes on the wire (gzip body).
    pub wire_bytes: u64,
    /// Acknowledged, rejected or failed.
    pub outcome: kedge_outcome,
    /// `KEDGE_OK` when acknowledged, else the failure's code.
    pub result: kedge_result,
    /// HTTP status of the last answer for this chunk; 0 when there was none (network failure, not tried).
    pub http_status: u16,
    /// What happened, NUL-terminated.
    pub message: *const c_char,
    /// True for the chunk's last report: every chunk gets exactly one final report (acknowledged, rejected or
    /// dropped), after any number of intermediate ones (failed: kept in RAM; spooled: durable on flash). 1 or 0.
    pub is_final: u8,
    /// 1 when the report is the data-management service's word on a chunk queued earlier (its failure or success
    /// notification, or its status row: `KEDGE_OUTCOME_INGESTED`, `KEDGE_OUTCOME_REJECTED`, or
    /// `KEDGE_OUTCOME_SPOOLED` when it failed transiently and is sent again), 0 when it is about a send.
    pub from_dm: u8,
}

/// Counters of a client. Read with `kedge_client_stats` at any time, even while another thread sends.
#[repr(C)]
#[derive(Clone, Copy, Default)]
pub struct kedge_stats {
    /// Records taken by `kedge_append` and `kedge_append_lines`.
    pub records_appended: u64,
    /// Raw bytes taken by `kedge_append`.
    pub bytes_appended: u64,
    /// Records in requests sent, whatever the answer (a retried chunk counts again).
    pub records_sent: u64,
    /// Raw bytes in requests sent.
    pub bytes_sent_raw: u64,
    /// Body bytes on the wire.
    pub bytes_sent_wire: u64,
    /// Records the service acknowledged.
    pub records_acknowledged: u64,
    /// Chunks the service acknowledged.
    pub chunks_acknowledged: u64,
    /// Records the service refused permanently (dropped, or quarantined in the spool's rejected/).
    pub records_rejected: u64,
    /// Chunks the service refused permanently.
    pub chunks_rejected: u64,
    /// HTTP requests made.
    pub requests: u64,
    /// Requests that resent a chunk.
    pub retries: u64,
    /// Requests that failed, any class.
    pub failures: u64,
    /// Records buffered in RAM now.
    pub records_buffered: u64,
    /// HTTP status of the last answer; 0 when none yet or no answer.
    pub last_http_status: u64,
    /// Destinations added.
    pub destinations: u64,
    /// Chunks written to the spool.
    pub chunks_spooled: u64,
    /// Records written to the spool.
    pub records_spooled: u64,
    /// Bytes written to the spool (compressed payloads).
    pub bytes_spooled: u64,
    /// Spooled chunks the service acknowledged.
    pub chunks_replayed: u64,
    /// Records of spooled chunks the service acknowledged.
    pub records_replayed: u64,
    /// Chunks the full spool dropped (spool.policy=drop-oldest).
    pub chunks_dropped: u64,
    /// Records the full spool dropped.
    pub records_dropped: u64,
    /// Bytes the full spool dropped.
    pub bytes_dropped: u64,
    /// Chunks found corrupt in the spool: quarantined in corrupt/, never sent.
    pub chunks_corrupt: u64,
    /// Chunks in the spool now.
    pub spool_chunks: u64,
    /// Bytes in the spool now.
    pub spool_bytes: u64,
    /// Spool writes, removals and moves that failed (read-only or failing flash, full disk); each is logged at
    /// error level and returned as `KEDGE_SPOOL_IO` by the call it happened in.
    pub spool_io_errors: u64,
    /// Chunks found at open that the configured `spool.key_file` cannot open (another key, no key, or clear
    /// chunks with a key): kept untouched, never sent, until the spool is opened with their key.
    pub chunks_locked: u64,
    /// Appends refused with `KEDGE_QUEUE_FULL` (the destination's batch and sealed chunks were all waiting).
    pub appends_queue_full: u64,
    /// Chunks in the spool's quarantine now (`rejected/` and `corrupt/`).
    pub quarantine_chunks: u64,
    /// Their bytes.
    pub quarantine_bytes: u64,
    /// Quarantined chunks deleted to keep the quarantine within `spool.quarantine_max_*` (oldest first).
    pub quarantine_dropped_chunks: u64,
    /// Chunks of a newer firmware's format found at open: kept untouched, never read.
    pub chunks_newer: u64,
    /// Records posted to the DM's queue (queued and managed mode; also counted in `records_acknowledged`).
    pub records_queued: u64,
    /// Chunks posted to the DM's queue.
    pub chunks_queued: u64,
    /// Records of queued chunks the DM reported ingested (with `queued.report=all`).
    pub records_ingested: u64,
    /// Queued chunks the DM reported ingested.
    pub chunks_ingested: u64,
}

/// Log callback: `message` is NUL-terminated, valid during the call, and never contains a secret.
pub type kedge_log_callback = Option<
    unsafe extern "C" fn(userdata: *mut c_void, level: kedge_log_level, message: *const c_char),
>;
/// Delivery callback: one call per chunk outcome.
pub type kedge_delivery_callback =
    Option<unsafe extern "C" fn(userdata: *mut c_void, report: *const kedge_delivery_report)>;

/// Token callback, for firmware with its own token source: write a NUL-terminated bearer token (without
/// "Bearer ") into `token_buf` (`token_buf_len` bytes, 16 KiB) and its expiry as Unix seconds into
/// `*out_expires_unix` (0 if unknown: it is asked again after 60 s), and return 0; return non-zero when no token
/// can be had now (the message in `token_buf`, if any, is logged). Called from whichever thread sends, with the
/// client locked; it must not call the client.
pub type kedge_token_callback = Option<
    unsafe extern "C" fn(
        userdata: *mut c_void,
        token_buf: *mut c_char,
        token_buf_len: usize,
        out_expires_unix: *mut u64,
    ) -> i32,
>;

/// Largest token a callback may hand over.
const TOKEN_CALLBACK_BUF: usize = 16 * 1024;

/// The caller's userdata pointer. The caller promises it may be used from any thread that calls into the client.
#[derive(Clone, Copy)]
struct UserData(*mut c_void);
// SAFETY: the pointer is only handed back to the caller's own callback; the README's "Callbacks" section makes
// its thread-safety the caller's promise, as librdkafka and rustls-ffi do.
unsafe impl Send for UserData {}
// SAFETY: as for Send: the pointer is never dereferenced here, only passed back to the caller's callback.
unsafe impl Sync for UserData {}

impl UserData {
    // A method, not a field access, so closures capture the whole (Send + Sync) wrapper.
    fn get(self) -> *mut c_void {
        self.0
    }
}

struct ConfigBox {
    cfg: Config,
    log: Option<(
        unsafe extern "C" fn(*mut c_void, kedge_log_level, *const c_char),
        UserData,
    )>,
    delivery: Option<(
        unsafe extern "C" fn(*mut c_void, *const kedge_delivery_report),
        UserData,
    )>,
}

/// Runs `f` behind the panic boundary.
fn guard(f: impl FnOnce() -> kedge_result) -> kedge_result {
    catch_unwind(AssertUnwindSafe(f)).unwrap_or(kedge_result::KEDGE_PANIC)
}

/// Copies `msg` into a caller's buffer, truncated on a character boundary and NUL-terminated.
///
/// # Safety
/// `buf` must be NULL or valid for `len` bytes of writes.
unsafe fn write_message(buf: *mut c_char, len: usize, msg: &str) {
    if buf.is_null() || len == 0 {
        return;
    }
    let mut n = msg.len().min(len - 1);
    while !msg.is_char_boundary(n) {
        n -= 1;
    }
    // SAFETY: the caller guarantees `buf` is valid for `len` bytes and n + 1 <= len; the source is a separate
    // Rust string, so the regions do not overlap.
    unsafe {
        std::ptr::copy_nonoverlapping(msg.as_ptr(), buf as *mut u8, n);
        *buf.add(n) = 0;
    }
}

/// A C string argument as UTF-8.
///
/// # Safety
/// `p` must be NULL or point to a NUL-terminated string.
unsafe fn arg_str<'a>(p: *const c_char, what: &str) -> Result<&'a str, Error> {
    if p.is_null() {
        return Err(Error::new(
            ErrorKind::NullParameter,
            format!("{what} is NULL"),
        ));
    }
    // SAFETY: non-NULL and NUL-terminated by the caller's contract.
    let s = unsafe { CStr::from_ptr(p) };
    s.to_str().map_err(|_| {
        Error::new(
            ErrorKind::InvalidArgument,
            format!("{what} is not valid UTF-8"),
        )
    })
}

/// Copies a line into a fixed stack buffer as a C string: callbacks must not allocate per call.
fn to_c_line(msg: &str, buf: &mut [u8]) {
    let mut n = msg.len().min(buf.len() - 1);
    while !msg.is_char_boundary(n) {
        n -= 1;
    }
    for (dst, &src) in buf.iter_mut().zip(msg.as_bytes()[..n].iter()) {
        // An interior NUL would cut the message short for C: show it as '?'.
        *dst = if src == 0 { b'?' } else { src };
    }
    buf[n] = 0;
}

fn fail_into(err: Error, errbuf: *mut c_char, errlen: usize) -> kedge_result {
    // SAFETY: callers pass their own (errbuf, errlen) through, documented as NULL or valid for errlen bytes.
    unsafe { write_message(errbuf, errlen, &err.message) };
    err.kind.into()
}

/// Runs `f` behind the panic boundary; its error's message goes to the caller's `errbuf` (NULL or valid for
/// `errlen` bytes, as every function taking one documents).
fn guard_reporting(
    errbuf: *mut c_char,
    errlen: usize,
    f: impl FnOnce() -> Result<(), Error>,
) -> kedge_result {
    guard(|| match f() {
        Ok(()) => kedge_result::KEDGE_OK,
        Err(e) => fail_into(e, errbuf, errlen),
    })
}

/// Runs `f` behind the panic boundary on the config that [`config_mut`] found, or answers its error.
fn with_config(
    config: Result<&mut ConfigBox, Error>,
    f: impl FnOnce(&mut ConfigBox) -> kedge_result,
) -> kedge_result {
    guard(|| match config {
        Ok(c) => f(c),
        Err(e) => e.kind.into(),
    })
}

/// The library's version, e.g. "0.1.0". Never NULL; static.
#[no_mangle]
pub extern "C" fn kedge_version() -> *const c_char {
    const V: &CStr =
        match CStr::from_bytes_with_nul(concat!(env!("CARGO_PKG_VERSION"), "\0").as_bytes()) {
            Ok(v) => v,
            Err(_) => c"unknown",
        };
    V.as_ptr()
}

/// A short static description of a result code. Never NULL; unknown codes give "unknown result code".
/// Takes the code as an integer so that any value is safe to pass.
#[no_mangle]
pub extern "C" fn kedge_result_str(result: u32) -> *const c_char {
    kedge_result::ALL
        .iter()
        .find(|r| **r as u32 == result)
        .map_or(c"unknown result code", |r| r.text())
        .as_ptr()
}

/// Creates an empty configuration with every default (see README "Configuration keys").
///
/// # Safety
/// `out_config` must be NULL or valid for a pointer write.
#[no_mangle]
pub unsafe extern "C" fn kedge_config_new(out_config: *mut *mut kedge_config) -> kedge_result {
    guard(|| {
        if out_config.is_null() {
            return kedge_result::KEDGE_NULL_PARAMETER;
        }
        let b = Box::new(ConfigBox {
            cfg: Config::default(),
            log: None,
            delivery: None,
        });
        // SAFETY: checked non-NULL; the caller provides a writable pointer slot.
        unsafe { *out_config = Box::into_raw(b) as *mut kedge_config };
        kedge_result::KEDGE_OK
    })
}

/// Frees a configuration. NULL is allowed and ignored. Clients made from it are unaffected.
///
/// # Safety
/// `config` must be NULL or from `kedge_config_new`, not yet freed.
#[no_mangle]
pub unsafe extern "C" fn kedge_config_free(config: *mut kedge_config) {
    let _ = guard(|| {
        if !config.is_null() {
            // SAFETY: the pointer came from Box::into_raw in kedge_config_new and is freed once.
            drop(unsafe { Box::from_raw(config as *mut ConfigBox) });
        }
        kedge_result::KEDGE_OK
    });
}

/// # Safety
/// `config` must be NULL or a live config.
unsafe fn config_mut<'a>(config: *mut kedge_config) -> Result<&'a mut ConfigBox, Error> {
    if config.is_null() {
        return Err(Error::new(ErrorKind::NullParameter, "config is NULL"));
    }
    // SAFETY: a live config from kedge_config_new; the caller does not share it across threads while changing it.
    Ok(unsafe { &mut *(config as *mut ConfigBox) })
}

/// Sets one configuration key (see README "Configuration keys"). On failure, a message naming the key is
/// written to `errbuf` (may be NULL).
///
/// # Safety
/// `config` a live config; `key`, `value` NUL-terminated strings; `errbuf` NULL or valid for `errbuf_len` bytes.
#[no_mangle]
pub unsafe extern "C" fn kedge_config_set(
    config: *mut kedge_config,
    key: *const c_char,
    value: *const c_char,
    errbuf: *mut c_char,
    errbuf_len: usize,
) -> kedge_result {
    guard_reporting(errbuf, errbuf_len, || {
        // SAFETY: `config` is NULL or a live config and `key`, `value` NULL or NUL-terminated strings (this
        // function's `# Safety`); config_mut and arg_str check NULL and UTF-8 before any use.
        let c = unsafe { config_mut(config) }?;
        // SAFETY: as above (arg_str checks NULL and UTF-8).
        let key = unsafe { arg_str(key, "key") }?;
        // SAFETY: as above.
        let value = unsafe { arg_str(value, "value") }?;
        c.cfg.set(key, value)
    })
}

/// Adds CA certificates (PEM text, `pem_len` bytes, need not be NUL-terminated) to trust, for gateways with a
/// private CA or no system store. On failure, a message is written to `errbuf` (may be NULL), as by
/// `kedge_config_set`.
///
/// # Safety
/// `config` a live config; `pem` valid for `pem_len` bytes; `errbuf` NULL or valid for `errbuf_len` bytes.
#[no_mangle]
pub unsafe extern "C" fn kedge_config_set_ca_pem(
    config: *mut kedge_config,
    pem: *const u8,
    pem_len: usize,
    errbuf: *mut c_char,
    errbuf_len: usize,
) -> kedge_result {
    guard_reporting(errbuf, errbuf_len, || {
        // SAFETY: `config` is NULL or a live config (this function's `# Safety`), which config_mut checks.
        let c = unsafe { config_mut(config) }?;
        if pem.is_null() {
            return Err(Error::new(ErrorKind::NullParameter, "pem is NULL"));
        }
        // SAFETY: non-NULL and valid for pem_len bytes by contract.
        let pem = unsafe { std::slice::from_raw_parts(pem, pem_len) };
        c.cfg.add_ca_pem(pem)
    })
}

/// Sets the spool's AES-256-GCM key from memory (`key_len` must be 32), for firmware that keeps it in a secure
/// element rather than a file. The key is copied, zeroed when the config is freed, and never written anywhere
/// (nor into a message). On failure, a message is written to `errbuf` (may be NULL), as by `kedge_config_set`.
///
/// # Safety
/// `config` a live config; `key` valid for `key_len` bytes; `errbuf` NULL or valid for `errbuf_len` bytes.
#[no_mangle]
pub unsafe extern "C" fn kedge_config_set_spool_key(
    config: *mut kedge_config,
    key: *const u8,
    key_len: usize,
    errbuf: *mut c_char,
    errbuf_len: usize,
) -> kedge_result {
    guard_reporting(errbuf, errbuf_len, || {
        // SAFETY: `config` is NULL or a live config (this function's `# Safety`), which config_mut checks.
        let c = unsafe { config_mut(config) }?;
        if key.is_null() {
            return Err(Error::new(ErrorKind::NullParameter, "key is NULL"));
        }
        if key_len != 32 {
            return Err(Error::new(
                ErrorKind::InvalidArgument,
                format!("a spool key is exactly 32 bytes, not {key_len}: pass the raw AES-256 key"),
            ));
        }
        // SAFETY: non-NULL and valid for 32 bytes by contract.
        let bytes = unsafe { std::slice::from_raw_parts(key, 32) };
        c.cfg.spool_key = Some(kusto_edge_core::config::parse_key(bytes)?);
        Ok(())
    })
}

/// Sets a token callback as the credential (`auth.method=callback`). NULL callback removes it.
///
/// # Safety
/// `config` a live config; `userdata` usable from any thread that calls into the client.
#[no_mangle]
pub unsafe extern "C" fn kedge_config_set_token_callback(
    config: *mut kedge_config,
    callback: kedge_token_callback,
    userdata: *mut c_void,
) -> kedge_result {
    with_config(
        // SAFETY: `config` is NULL or a live config (this function's `# Safety`), which config_mut checks.
        unsafe { config_mut(config) },
        |c| {
            let Some(f) = callback else {
                return kedge_result::KEDGE_NULL_PARAMETER;
            };
            let ud = UserData(userdata);
            c.cfg.auth.set_callback(Arc::new(move || {
                let mut buf = vec![0u8; TOKEN_CALLBACK_BUF];
                let mut expires = 0u64;
                // SAFETY: the caller registered this function for this userdata; the buffer and the expiry slot live
                // for the whole call and their sizes are passed along.
                let rc = unsafe {
                    f(
                        ud.get(),
                        buf.as_mut_ptr() as *mut c_char,
                        buf.len(),
                        &mut expires,
                    )
                };
                // Whatever the callback wrote is read up to the first NUL, within the buffer.
                let end = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
                let text = std::str::from_utf8(&buf[..end]).map(str::to_owned);
                buf.zeroize();
                match (rc, text) {
                    (0, Ok(t)) if !t.is_empty() => Ok((t, expires)),
                    (0, _) => Err("the token callback returned 0 but no valid token".to_owned()),
                    (_, Ok(msg)) => Err(format!(
                        "the token callback failed ({rc}): {}",
                        msg.escape_debug()
                    )),
                    (_, Err(_)) => Err(format!("the token callback failed ({rc})")),
                }
            }));
            kedge_result::KEDGE_OK
        },
    )
}

/// Sets the log callback (NULL callback: no logging). Lines at or above `log.level` are passed on.
///
/// # Safety
/// `config` a live config; `userdata` usable from any thread that calls into the client.
#[no_mangle]
pub unsafe extern "C" fn kedge_config_set_log_callback(
    config: *mut kedge_config,
    callback: kedge_log_callback,
    userdata: *mut c_void,
) -> kedge_result {
    with_config(
        // SAFETY: `config` is NULL or a live config (this function's `# Safety`), which config_mut checks.
        unsafe { config_mut(config) },
        |c| {
            c.log = callback.map(|f| (f, UserData(userdata)));
            kedge_result::KEDGE_OK
        },
    )
}

/// Sets the delivery callback: called once per chunk outcome (acknowledged, rejected, failed for now).
///
/// # Safety
/// `config` a live config; `userdata` usable from any thread that calls into the client.
#[no_mangle]
pub unsafe extern "C" fn kedge_config_set_delivery_callback(
    config: *mut kedge_config,
    callback: kedge_delivery_callback,
    userdata: *mut c_void,
) -> kedge_result {
    with_config(
        // SAFETY: `config` is NULL or a live config (this function's `# Safety`), which config_mut checks.
        unsafe { config_mut(config) },
        |c| {
            c.delivery = callback.map(|f| (f, UserData(userdata)));
            kedge_result::KEDGE_OK
        },
    )
}

/// The most heap a client built from this configuration will ever hold, in bytes.
///
/// # Safety
/// `config` a live config; `out_bytes` valid for a write.
#[no_mangle]
pub unsafe extern "C" fn kedge_config_memory_bound(
    config: *const kedge_config,
    out_bytes: *mut u64,
) -> kedge_result {
    guard(|| {
        if config.is_null() || out_bytes.is_null() {
            return kedge_result::KEDGE_NULL_PARAMETER;
        }
        // SAFETY: a live config (read only) and a writable u64, by contract.
        unsafe { *out_bytes = (*(config as *const ConfigBox)).cfg.memory_bound() };
        kedge_result::KEDGE_OK
    })
}

/// Creates a client from a configuration (copied: the config may be freed afterwards). Checks the config and
/// allocates the client's buffers; does not connect yet. On failure, a message goes to `errbuf` (may be NULL).
///
/// # Safety
/// `config` a live config; `out_client` valid for a write; `errbuf` NULL or valid for `errbuf_len` bytes.
#[no_mangle]
pub unsafe extern "C" fn kedge_client_new(
    config: *const kedge_config,
    out_client: *mut *mut kedge_client,
    errbuf: *mut c_char,
    errbuf_len: usize,
) -> kedge_result {
    guard(|| {
        if config.is_null() || out_client.is_null() {
            return fail_into(
                Error::new(ErrorKind::NullParameter, "config or out_client is NULL"),
                errbuf,
                errbuf_len,
            );
        }
        // SAFETY: a live config, read only.
        let c = unsafe { &*(config as *const ConfigBox) };
        let log = c.log.map(|(f, ud)| {
            Arc::new(move |level: LogLevel, msg: &str| {
                let mut line = [0u8; 1024];
                to_c_line(msg, &mut line);
                let level = kedge_log_level::from(level);
                // SAFETY: the caller registered this function for this userdata; the line is NUL-terminated and
                // outlives the call.
                unsafe { f(ud.get(), level, line.as_ptr() as *const c_char) }
            }) as kusto_edge_core::client::LogFn
        });
        let delivery = c.delivery.map(|(f, ud)| {
            Arc::new(move |r: &DeliveryReport<'_>| {
                let mut id = [0u8; 40];
                to_c_line(r.chunk_id, &mut id);
                let mut msg = [0u8; 1024];
                to_c_line(r.message, &mut msg);
                let report = kedge_delivery_report {
                    destination: r.destination,
                    chunk_id: id.as_ptr() as *const c_char,
                    records: r.records,
                    raw_bytes: r.raw_bytes,
                    wire_bytes: r.wire_bytes,
                    outcome: r.outcome.into(),
                    result: r.error.map_or(kedge_result::KEDGE_OK, Into::into),
                    http_status: r.http_status,
                    message: msg.as_ptr() as *const c_char,
                    is_final: u8::from(r.is_final),
                    from_dm: u8::from(r.from_dm),
                };
                // SAFETY: the report and its strings live on this stack frame for the whole call.
                unsafe { f(ud.get(), &report) }
            }) as kusto_edge_core::client::DeliveryFn
        });
        match Client::new(&c.cfg, log, delivery) {
            Ok(client) => {
                // SAFETY: out_client checked non-NULL.
                unsafe { *out_client = Box::into_raw(Box::new(client)) as *mut kedge_client };
                kedge_result::KEDGE_OK
            }
            Err(e) => fail_into(e, errbuf, errbuf_len),
        }
    })
}

/// Frees a client. NULL is allowed. Nothing is sent: call `kedge_flush` first. With a spool (`spool.dir`),
/// every record still in RAM (filling batches and sealed chunks of every destination) is written to the spool
/// first and replayed by the next client on that directory; each such chunk gets a `KEDGE_OUTCOME_SPOOLED`
/// report. Without a spool, records still in RAM are lost and a warning with their count is logged. The log and
/// delivery callbacks may run inside this call, on the calling thread. It blocks for those spool writes only
/// (bounded by the flash); it does not wait for the network.
///
/// # Safety
/// `client` NULL or from `kedge_client_new`, not yet freed, no other thread is using it or will, and not
/// called from inside one of this client's callbacks.
#[no_mangle]
pub unsafe extern "C" fn kedge_client_free(client: *mut kedge_client) {
    let _ = guard(|| {
        if !client.is_null() {
            // SAFETY: came from Box::into_raw in kedge_client_new; freed once, with no concurrent users.
            drop(unsafe { Box::from_raw(client as *mut Client) });
        }
        kedge_result::KEDGE_OK
    });
}

/// Runs `f` on a live client, recording a failure as its last error.
///
/// # Safety
/// `client` NULL or a live client.
unsafe fn with_client(
    client: *const kedge_client,
    f: impl FnOnce(&Client) -> Result<(), Error>,
) -> kedge_result {
    guard(|| {
        if client.is_null() {
            return kedge_result::KEDGE_NULL_PARAMETER;
        }
        // SAFETY: a live client; Client is Sync, so shared references from several threads are fine.
        let c = unsafe { &*(client as *const Client) };
        match f(c) {
            Ok(()) => kedge_result::KEDGE_OK,
            Err(e) => c.record_error(e).kind.into(),
        }
    })
}

/// Adds a destination (database, table, data format, optional ingestion mapping name or NULL) and allocates its
/// batch buffer. An empty database name takes the connection string's `Initial Catalog`. `*out_destination` receives its id for `kedge_append`.
///
/// # Safety
/// `client` a live client; strings NUL-terminated (`mapping` may be NULL); `out_destination` valid for a write.
#[no_mangle]
pub unsafe extern "C" fn kedge_client_add_destination(
    client: *mut kedge_client,
    database: *const c_char,
    table: *const c_char,
    format: *const c_char,
    mapping: *const c_char,
    out_destination: *mut u32,
) -> kedge_result {
    // SAFETY: `client` is NULL or a live client, as with_client requires; the strings are NULL or NUL-terminated and
    // `out_destination` NULL or writable (this function's `# Safety`), each checked for NULL before use.
    unsafe {
        with_client(client, |c| {
            if out_destination.is_null() {
                return Err(Error::new(
                    ErrorKind::NullParameter,
                    "out_destination is NULL",
                ));
            }
            let db = arg_str(database, "database")?;
            let table = arg_str(table, "table")?;
            let format = arg_str(format, "format")?;
            let mapping = if mapping.is_null() {
                None
            } else {
                Some(arg_str(mapping, "mapping")?)
            };
            let id = c.add_destination(db, table, format, mapping)?;
            *out_destination = id;
            Ok(())
        })
    }
}

/// Takes one record (`record_len` bytes, one row; a trailing newline is optional) into a destination's lane.
/// Never sends, compresses, writes flash or waits for another destination's send: it checks the record (its
/// length, UTF-8, JSON syntax for json formats: time linear in the record), copies it into the batch, and when
/// the batch is full moves it aside for `kedge_poll` to send.
///
/// Results: `KEDGE_OK`, the record is taken. `KEDGE_QUEUE_FULL`: the batch and `batch.sealed` full chunks wait
/// to be sent; the record was NOT taken: call `kedge_poll` and append it again. The record was not taken
/// either, and never will be as it is, for `KEDGE_RECORD_TOO_LARGE` and `KEDGE_INVALID_RECORD`. Argument errors:
/// `KEDGE_NULL_PARAMETER`, `KEDGE_INVALID_DESTINATION`. Nothing else is returned (`KEDGE_PANIC` aside).
///
/// # Safety
/// `client` a live client; `record` valid for `record_len` bytes.
#[no_mangle]
pub unsafe extern "C" fn kedge_append(
    client: *mut kedge_client,
    destination: u32,
    record: *const u8,
    record_len: usize,
) -> kedge_result {
    // SAFETY: `client` is NULL or a live client, as with_client requires; `record` is NULL or valid for
    // `record_len` bytes of reads for the call (this function's `# Safety`), and is read only after its NULL check.
    unsafe {
        with_client(client, |c| {
            if record.is_null() {
                return Err(Error::new(ErrorKind::NullParameter, "record is NULL"));
            }
            // The length is checked before a byte is touched: a `(size_t)-1` from a failed read() must be
            // refused, not turned into a slice that runs past the caller's buffer.
            c.check_record_len(record_len)?;
            let rec = std::slice::from_raw_parts(record, record_len);
            c.append(destination, rec)
        })
    }
}

/// What `kedge_append_lines` took.
#[repr(C)]
#[derive(Clone, Copy, Default)]
pub struct kedge_lines_taken {
    /// Bytes of the buffer taken, whole lines only. The rest begins with the record not taken (after an error),
    /// with an incomplete line, or, after `max_records` records, with whatever followed the last one taken
    /// (empty lines included).
    pub consumed_len: usize,
    /// Records taken.
    pub records: u64,
    /// Lines taken: records, skipped empty lines and lines inside quoted CSV fields (for line numbers).
    pub lines: u64,
}

/// Takes the newline-ended records of `buf[0..buf_len)`, at most `max_records` of them: `kedge_append` for each
/// line, in one call and with one lock of the destination's lane per group of records, so a reader can hand
/// over what it read without splitting and copying the lines itself. Each line is one record (for csv, psv,
/// scsv and sohsv a newline inside a quoted field belongs to its record; a multijson object cannot span lines
/// here: use `kedge_append`); a `\r` before the newline is dropped and empty lines are skipped. `*out` says
/// what was taken, whatever the result (when `client` and `out` are not NULL).
///
/// Stops with `KEDGE_OK` before an incomplete last line (hand it over again with more bytes, or with
/// `kedge_append` at the end of the input) or after `max_records` records. Stops at the first record not taken
/// with its result, `out->consumed_len` at its first byte: `KEDGE_QUEUE_FULL` (call `kedge_poll` and offer it again),
/// `KEDGE_INVALID_RECORD` or `KEDGE_RECORD_TOO_LARGE` (it never will be taken as it is: skip the line).
/// `KEDGE_INVALID_ARGUMENT` for a format whose records are whole documents (avro, apacheavro, parquet, orc, sstream,
/// singlejson, raw),
/// or a `buf_len` larger than any buffer. `KEDGE_NULL_PARAMETER`, `KEDGE_INVALID_DESTINATION` as for `kedge_append`.
///
/// # Safety
/// `client` a live client; `buf` valid for `buf_len` bytes; `out` valid for a write.
#[no_mangle]
pub unsafe extern "C" fn kedge_append_lines(
    client: *mut kedge_client,
    destination: u32,
    buf: *const u8,
    buf_len: usize,
    max_records: u64,
    out: *mut kedge_lines_taken,
) -> kedge_result {
    // SAFETY: `client` is NULL or a live client, as with_client requires; `out` is NULL or writable and `buf`
    // NULL or valid for `buf_len` bytes of reads (this function's `# Safety`), each used only after its NULL check.
    unsafe {
        with_client(client, |c| {
            if out.is_null() {
                return Err(Error::new(ErrorKind::NullParameter, "out is NULL"));
            }
            out.write(kedge_lines_taken::default());
            if buf.is_null() {
                return Err(Error::new(ErrorKind::NullParameter, "buf is NULL"));
            }
            // A `(size_t)-1` from a failed read() must be refused, not turned into a slice.
            if buf_len > isize::MAX as usize {
                return Err(Error::new(
                    ErrorKind::InvalidArgument,
                    format!("buf_len {buf_len} is larger than any buffer"),
                ));
            }
            let bytes = std::slice::from_raw_parts(buf, buf_len);
            let (taken, r) = c.append_lines(destination, bytes, max_records);
            out.write(kedge_lines_taken {
                consumed_len: taken.consumed,
                records: taken.records,
                lines: taken.lines,
            });
            r
        })
    }
}

/// Sends every buffered batch now, waiting for the answers, then replays the spool: `kedge_flush_timeout` with
/// `retry.max_total_ms` as the timeout.
///
/// # Safety
/// `client` a live client.
#[no_mangle]
pub unsafe extern "C" fn kedge_flush(client: *mut kedge_client) -> kedge_result {
    // SAFETY: `client` is NULL or a live client (this function's `# Safety`), as with_client requires.
    unsafe { with_client(client, |c| c.flush()) }
}

/// Sends every buffered batch now, waiting for the answers, then replays the spool. Blocks at most about
/// `timeout_ms`: it waits that long at most for another thread's send, starts no request after it and cuts a
/// request still running then (its chunk is kept: a timeout); chunks it had no time for go to the spool (or
/// stay in RAM without one), which takes the flash writes' time on top. Destinations that back off after failures (or a `Retry-After`) are not contacted: their chunks
/// go to the spool, or stay in RAM with `KEDGE_BACKING_OFF` without one; call `kedge_poll` and flush again
/// when it says. Returns the first failure: `KEDGE_SPOOLED` means all that was not delivered is durable on
/// flash; `KEDGE_TRANSIENT_FAILURE` also when time ran out with chunks left in RAM.
///
/// # Safety
/// `client` a live client.
#[no_mangle]
pub unsafe extern "C" fn kedge_flush_timeout(
    client: *mut kedge_client,
    timeout_ms: u32,
) -> kedge_result {
    // SAFETY: `client` is NULL or a live client (this function's `# Safety`), as with_client requires.
    unsafe {
        with_client(client, |c| {
            c.flush_timeout(std::time::Duration::from_millis(timeout_ms as u64))
        })
    }
}

/// Writes every buffered batch to the spool without sending it (before a planned power-off, say): a durable
/// flush. `KEDGE_INVALID_ARGUMENT` without a spool (`spool.dir`).
///
/// # Safety
/// `client` a live client.
#[no_mangle]
pub unsafe extern "C" fn kedge_flush_to_spool(client: *mut kedge_client) -> kedge_result {
    // SAFETY: `client` is NULL or a live client (this function's `# Safety`), as with_client requires.
    unsafe { with_client(client, |c| c.flush_to_spool()) }
}

/// Periodic work for a main loop: sends full chunks and batches older than `batch.max_age_ms`, retries
/// destinations whose backoff ran out, spools the chunks of destinations that back off, and replays up to
/// `spool.replay_per_poll` spooled chunks. Bounded by `retry.max_total_ms` plus one request's timeouts. Returns
/// at once (`KEDGE_OK`, nothing done) when another thread is sending. `*out_next_ms` (may be NULL) receives the
/// milliseconds until the next poll has work, on every return, failures included (100 when `client` is NULL).
///
/// # Safety
/// `client` a live client or NULL; `out_next_ms` NULL or valid for a write.
#[no_mangle]
pub unsafe extern "C" fn kedge_poll(
    client: *mut kedge_client,
    out_next_ms: *mut u32,
) -> kedge_result {
    // Also what a NULL client or a caught panic says: a caller's loop never spins on 0.
    let mut next = kusto_edge_core::client::BUSY_RETRY_MS;
    // SAFETY: `client` is NULL or a live client, as with_client requires; `out_next_ms` is NULL or writable
    // (this function's `# Safety`) and written only after its NULL check.
    let r = unsafe {
        with_client(client, |c| {
            let (n, r) = c.poll_next();
            next = n;
            r
        })
    };
    if !out_next_ms.is_null() {
        // SAFETY: writable by contract.
        unsafe { *out_next_ms = next };
    }
    r
}

/// Copies the client's counters into `*out_stats`. Never waits for a send in progress. Pass
/// `sizeof(struct kedge_stats)` as `stats_size`: new counters are only ever added at the end of the struct, and
/// a program built against an older header gets exactly the fields it knows.
///
/// # Safety
/// `client` a live client; `out_stats` valid for `stats_size` bytes of writes.
#[no_mangle]
pub unsafe extern "C" fn kedge_client_stats(
    client: *const kedge_client,
    out_stats: *mut kedge_stats,
    stats_size: usize,
) -> kedge_result {
    guard(|| {
        if client.is_null() || out_stats.is_null() {
            return kedge_result::KEDGE_NULL_PARAMETER;
        }
        if stats_size == 0 || !stats_size.is_multiple_of(8) {
            return kedge_result::KEDGE_INVALID_ARGUMENT;
        }
        // SAFETY: a live client (Sync) and a writable stats struct, by contract.
        let s = unsafe { &*(client as *const Client) }.stats();
        let out = kedge_stats {
            records_appended: s.records_appended,
            bytes_appended: s.bytes_appended,
            records_sent: s.records_sent,
            bytes_sent_raw: s.bytes_sent_raw,
            bytes_sent_wire: s.bytes_sent_wire,
            records_acknowledged: s.records_acknowledged,
            chunks_acknowledged: s.chunks_acknowledged,
            records_rejected: s.records_rejected,
            chunks_rejected: s.chunks_rejected,
            requests: s.requests,
            retries: s.retries,
            failures: s.failures,
            records_buffered: s.records_buffered,
            last_http_status: s.last_http_status,
            destinations: s.destinations,
            chunks_spooled: s.chunks_spooled,
            records_spooled: s.records_spooled,
            bytes_spooled: s.bytes_spooled,
            chunks_replayed: s.chunks_replayed,
            records_replayed: s.records_replayed,
            chunks_dropped: s.chunks_dropped,
            records_dropped: s.records_dropped,
            bytes_dropped: s.bytes_dropped,
            chunks_corrupt: s.chunks_corrupt,
            spool_chunks: s.spool_chunks,
            spool_bytes: s.spool_bytes,
            spool_io_errors: s.spool_io_errors,
            chunks_locked: s.chunks_locked,
            appends_queue_full: s.appends_queue_full,
            quarantine_chunks: s.quarantine_chunks,
            quarantine_bytes: s.quarantine_bytes,
            quarantine_dropped_chunks: s.quarantine_dropped_chunks,
            chunks_newer: s.chunks_newer,
            records_queued: s.records_queued,
            chunks_queued: s.chunks_queued,
            records_ingested: s.records_ingested,
            chunks_ingested: s.chunks_ingested,
        };
        let n = stats_size.min(std::mem::size_of::<kedge_stats>());
        // SAFETY: the caller's buffer holds stats_size >= n bytes; the source is a local struct of at least n
        // bytes; they do not overlap.
        unsafe {
            std::ptr::copy_nonoverlapping(
                &out as *const kedge_stats as *const u8,
                out_stats as *mut u8,
                n,
            )
        };
        kedge_result::KEDGE_OK
    })
}

/// Copies the message of the client's most recent failed call into `buf` (truncated, NUL-terminated; empty if
/// none). `out_len` (may be NULL) receives the message's full length, so a caller can retry with a larger buffer.
/// With several threads the message may be another thread's.
///
/// # Safety
/// `client` a live client; `buf` valid for `buf_len` bytes; `out_len` NULL or valid for a write.
#[no_mangle]
pub unsafe extern "C" fn kedge_client_last_error(
    client: *const kedge_client,
    buf: *mut c_char,
    buf_len: usize,
    out_len: *mut usize,
) -> kedge_result {
    guard(|| {
        if client.is_null() || buf.is_null() {
            return kedge_result::KEDGE_NULL_PARAMETER;
        }
        if buf_len == 0 {
            return kedge_result::KEDGE_INVALID_ARGUMENT;
        }
        // SAFETY: a live client; buffers per contract.
        let msg = unsafe { &*(client as *const Client) }.last_error();
        // SAFETY: `buf` is non-NULL (checked) and valid for `buf_len` bytes, `out_len` NULL or writable (this
        // function's `# Safety`); write_message stays within `buf_len`.
        unsafe {
            write_message(buf, buf_len, &msg);
            if !out_len.is_null() {
                *out_len = msg.len();
            }
        }
        kedge_result::KEDGE_OK
    })
}

/// What `kedge_client_spool_purge` deletes (bits, or-ed into its `what`).
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum kedge_spool_area {
    /// The pending chunks (waiting to be sent).
    KEDGE_SPOOL_PENDING = 1,
    /// The quarantined chunks (`rejected/`, `corrupt/`).
    KEDGE_SPOOL_QUARANTINE = 2,
    /// Both.
    KEDGE_SPOOL_ALL = 3,
}

const KEDGE_SPOOL_PENDING: u32 = kedge_spool_area::KEDGE_SPOOL_PENDING as u32;
const KEDGE_SPOOL_QUARANTINE: u32 = kedge_spool_area::KEDGE_SPOOL_QUARANTINE as u32;

/// What the spool holds, from `kedge_client_spool_status`.
#[repr(C)]
#[derive(Clone, Copy, Default)]
pub struct kedge_spool_status {
    /// Chunks waiting to be sent, and their bytes on flash.
    pub pending_chunks: u64,
    /// Bytes of the pending chunks.
    pub pending_bytes: u64,
    /// Records in the pending chunks.
    pub pending_records: u64,
    /// Chunks the service refused, kept in `rejected/` (`kedge_client_spool_requeue` sends them again).
    pub rejected_chunks: u64,
    /// Their bytes.
    pub rejected_bytes: u64,
    /// Damaged chunks kept in `corrupt/` for inspection, never sent.
    pub corrupt_chunks: u64,
    /// Their bytes.
    pub corrupt_bytes: u64,
    /// Intact chunks this configuration's `spool.key_file` cannot open, left untouched.
    pub locked_chunks: u64,
    /// Their bytes.
    pub locked_bytes: u64,
    /// Chunks written by newer firmware (a format this version cannot read), left untouched.
    pub newer_chunks: u64,
    /// Their bytes.
    pub newer_bytes: u64,
    /// Destinations (and sinks) with pending chunks: how many times the callback was called.
    pub destinations: u64,
}

/// One destination's pending chunks, passed to the callback of `kedge_client_spool_status`. Pointers are valid
/// only during the callback.
#[repr(C)]
pub struct kedge_spool_destination {
    /// Database, NUL-terminated.
    pub database: *const c_char,
    /// Table, NUL-terminated.
    pub table: *const c_char,
    /// Data format, NUL-terminated.
    pub format: *const c_char,
    /// Ingestion mapping, NUL-terminated; NULL without one.
    pub mapping: *const c_char,
    /// The sink the chunks were made for: 1 streaming, 2 queued.
    pub sink: u32,
    /// Pending chunks.
    pub chunks: u32,
    /// Records in them.
    pub records: u64,
    /// Their bytes on flash.
    pub bytes: u64,
    /// When the oldest of them was written, Unix milliseconds.
    pub oldest_unix_ms: u64,
}

/// Callback of `kedge_client_spool_status`, once per destination with pending chunks.
pub type kedge_spool_destination_callback = Option<
    unsafe extern "C" fn(userdata: *mut c_void, destination: *const kedge_spool_destination),
>;

/// A table filter from two C strings: both NULL for every table, both set for one.
///
/// # Safety
/// Each pointer NULL or a NUL-terminated string.
unsafe fn table_filter<'a>(
    database: *const c_char,
    table: *const c_char,
) -> Result<kusto_edge_core::spool::DestFilter<'a>, Error> {
    match (database.is_null(), table.is_null()) {
        (true, true) => Ok(kusto_edge_core::spool::DestFilter::All),
        (false, false) => Ok(kusto_edge_core::spool::DestFilter::Table {
            // SAFETY: non-NULL, NUL-terminated by contract.
            database: unsafe { arg_str(database, "database") }?,
            // SAFETY: as above.
            table: unsafe { arg_str(table, "table") }?,
        }),
        _ => Err(Error::new(
            ErrorKind::InvalidArgument,
            "give both database and table (one table), or neither (every table)",
        )),
    }
}

/// What the client's spool holds: totals into `*out_status` (pass `sizeof(struct kedge_spool_status)` as
/// `status_size`: new fields are only added at the end) and, when `callback` is not NULL, one call per
/// destination with pending chunks, in no particular order. Reads the spool's index only (no file is read);
/// waits for a send in progress on another thread. `KEDGE_INVALID_ARGUMENT` without a spool.
///
/// # Safety
/// `client` a live client; `out_status` valid for `status_size` bytes of writes.
#[no_mangle]
pub unsafe extern "C" fn kedge_client_spool_status(
    client: *mut kedge_client,
    out_status: *mut kedge_spool_status,
    status_size: usize,
    callback: kedge_spool_destination_callback,
    userdata: *mut c_void,
) -> kedge_result {
    // SAFETY: `client` is NULL or a live client, as with_client requires; `out_status` is NULL or valid for
    // `status_size` bytes of writes (this function's `# Safety`), written only after its NULL check.
    unsafe {
        with_client(client, |c| {
            if out_status.is_null() {
                return Err(Error::new(ErrorKind::NullParameter, "out_status is NULL"));
            }
            if status_size == 0 || !status_size.is_multiple_of(8) {
                return Err(Error::new(
                    ErrorKind::InvalidArgument,
                    "status_size must be sizeof(struct kedge_spool_status)",
                ));
            }
            let st = c.spool_status()?;
            let out = kedge_spool_status {
                pending_chunks: st.pending.chunks as u64,
                pending_bytes: st.pending.bytes,
                pending_records: st.dests.iter().map(|d| d.records).sum(),
                rejected_chunks: st.rejected.chunks as u64,
                rejected_bytes: st.rejected.bytes,
                corrupt_chunks: st.corrupt.chunks as u64,
                corrupt_bytes: st.corrupt.bytes,
                locked_chunks: st.locked.chunks as u64,
                locked_bytes: st.locked.bytes,
                newer_chunks: st.newer.chunks as u64,
                newer_bytes: st.newer.bytes,
                destinations: st.dests.len() as u64,
            };
            if let Some(f) = callback {
                for d in &st.dests {
                    let mut db = [0u8; kusto_edge_core::spool::MAX_NAME_LEN + 1];
                    let mut table = [0u8; kusto_edge_core::spool::MAX_NAME_LEN + 1];
                    let mut format = [0u8; 64];
                    let mut mapping = [0u8; kusto_edge_core::spool::MAX_NAME_LEN + 1];
                    to_c_line(&d.dest.database, &mut db);
                    to_c_line(&d.dest.table, &mut table);
                    to_c_line(&d.dest.format, &mut format);
                    let has_mapping = d
                        .dest
                        .mapping
                        .as_deref()
                        .map(|m| to_c_line(m, &mut mapping));
                    let cd = kedge_spool_destination {
                        database: db.as_ptr() as *const c_char,
                        table: table.as_ptr() as *const c_char,
                        format: format.as_ptr() as *const c_char,
                        mapping: if has_mapping.is_some() {
                            mapping.as_ptr() as *const c_char
                        } else {
                            std::ptr::null()
                        },
                        sink: d.sink as u32,
                        chunks: d.chunks,
                        records: d.records,
                        bytes: d.bytes,
                        oldest_unix_ms: d.oldest_created_unix_ms,
                    };
                    // SAFETY: the caller's callback with its userdata; the struct and strings outlive the call.
                    f(userdata, &cd);
                }
            }
            let n = status_size.min(std::mem::size_of::<kedge_spool_status>());
            // SAFETY: the caller's buffer holds status_size >= n bytes; no overlap with the local.
            std::ptr::copy_nonoverlapping(
                &out as *const kedge_spool_status as *const u8,
                out_status as *mut u8,
                n,
            );
            Ok(())
        })
    }
}

/// Deletes spooled chunks an operator no longer wants: those of one table (`database` and `table`, every format
/// and mapping) or, with both NULL, of every table. `what` is `KEDGE_SPOOL_PENDING`, `KEDGE_SPOOL_QUARANTINE`
/// or `KEDGE_SPOOL_ALL` (a `kedge_spool_area`). Records in RAM are not touched. `*out_chunks` (may be NULL) receives how many chunks were
/// deleted. Waits for a send in progress. `KEDGE_INVALID_ARGUMENT` without a spool, with one of database and
/// table NULL, or with `what` 0 or unknown bits.
///
/// # Safety
/// `client` a live client; `database`, `table` NULL or NUL-terminated; `out_chunks` NULL or valid for a write.
#[no_mangle]
pub unsafe extern "C" fn kedge_client_spool_purge(
    client: *mut kedge_client,
    database: *const c_char,
    table: *const c_char,
    what: u32,
    out_chunks: *mut u64,
) -> kedge_result {
    // SAFETY: `client` is NULL or a live client, as with_client requires; the strings are NULL or NUL-terminated
    // and the outputs NULL or writable (this function's `# Safety`), each checked for NULL before use.
    unsafe {
        with_client(client, |c| {
            if what == 0 || what & !(KEDGE_SPOOL_PENDING | KEDGE_SPOOL_QUARANTINE) != 0 {
                return Err(Error::new(
                    ErrorKind::InvalidArgument,
                    "what must be KEDGE_SPOOL_PENDING, KEDGE_SPOOL_QUARANTINE or both",
                ));
            }
            let filter = table_filter(database, table)?;
            let p = c.spool_purge(
                filter,
                what & KEDGE_SPOOL_PENDING != 0,
                what & KEDGE_SPOOL_QUARANTINE != 0,
            )?;
            if !out_chunks.is_null() {
                *out_chunks =
                    p.pending.chunks as u64 + p.rejected.chunks as u64 + p.corrupt.chunks as u64;
            }
            Ok(())
        })
    }
}

/// Moves the chunks the service refused (kept in the spool's `rejected/`) back to the pending ones, once their
/// cause is fixed (a mapping, a table's schema): of one table (`database` and `table`) or, with both NULL, all.
/// They go behind the pending chunks, within the spool's limits, and are sent by the next poll or flush.
/// `*out_chunks` (may be NULL) receives how many were requeued, `*out_left` (may be NULL) how many stayed in
/// `rejected/` because the spool is full. Waits for a send in progress. `KEDGE_INVALID_ARGUMENT` without a
/// spool or with one of database and table NULL.
///
/// # Safety
/// `client` a live client; `database`, `table` NULL or NUL-terminated; outputs NULL or valid for a write.
#[no_mangle]
pub unsafe extern "C" fn kedge_client_spool_requeue(
    client: *mut kedge_client,
    database: *const c_char,
    table: *const c_char,
    out_chunks: *mut u64,
    out_left: *mut u64,
) -> kedge_result {
    // SAFETY: `client` is NULL or a live client, as with_client requires; the strings are NULL or NUL-terminated
    // and the outputs NULL or writable (this function's `# Safety`), each checked for NULL before use.
    unsafe {
        with_client(client, |c| {
            let filter = table_filter(database, table)?;
            let r = c.spool_requeue(filter)?;
            if !out_chunks.is_null() {
                *out_chunks = r.chunks as u64;
            }
            if !out_left.is_null() {
                *out_left = r.left as u64;
            }
            Ok(())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_result_code_has_text_and_error_kinds_map_to_their_own_numbers() {
        for r in kedge_result::ALL {
            assert_ne!(
                // SAFETY: kedge_result_str returns a static NUL-terminated string for any code.
                unsafe { CStr::from_ptr(kedge_result_str(*r as u32)) },
                c"unknown result code"
            );
            // The conversions are each other's inverse, and keep the number.
            if let Some(k) = r.kind() {
                assert_eq!(kedge_result::from(k), *r);
                assert_eq!(k as u32, *r as u32);
            }
        }
        let mut numbers: Vec<u32> = kedge_result::ALL.iter().map(|r| *r as u32).collect();
        numbers.dedup();
        assert_eq!(
            numbers.len(),
            kedge_result::ALL.len(),
            "codes are unique and in order"
        );
        assert_eq!(
            // SAFETY: as above, also for an unknown code.
            unsafe { CStr::from_ptr(kedge_result_str(12345)) },
            c"unknown result code"
        );
        for k in [
            ErrorKind::NullParameter,
            ErrorKind::TransientFailure,
            ErrorKind::ReentrantCall,
            ErrorKind::Panic,
        ] {
            assert_eq!(kedge_result::from(k) as u32, k as u32);
        }
    }

    #[test]
    fn messages_are_truncated_on_char_boundaries_and_terminated() {
        let mut buf = [0x55 as c_char; 6];
        // SAFETY: `buf` is a local array valid for its whole length.
        unsafe { write_message(buf.as_mut_ptr(), buf.len(), "abcdé") };
        // "abcd" + 'é' (2 bytes) does not fit in 5: the 'é' is left out whole.
        // SAFETY: write_message NUL-terminated `buf` within its length.
        assert_eq!(unsafe { CStr::from_ptr(buf.as_ptr()) }.to_bytes(), b"abcd");
    }

    /// The config half of the C API with real pointers, NULLs and short buffers: what Miri checks for
    /// undefined behaviour (the client half needs ring's C code, which Miri cannot run).
    #[test]
    fn config_functions_handle_null_garbage_and_short_buffers() {
        // SAFETY: every pointer passed is NULL, a live config from kedge_config_new, a C string literal or a local
        // buffer with its true length: what each function's `# Safety` allows.
        unsafe {
            assert_eq!(
                kedge_config_new(std::ptr::null_mut()),
                kedge_result::KEDGE_NULL_PARAMETER
            );
            let mut cfg: *mut kedge_config = std::ptr::null_mut();
            assert_eq!(kedge_config_new(&mut cfg), kedge_result::KEDGE_OK);
            let mut err = [0x55 as c_char; 8];
            let r = kedge_config_set(
                cfg,
                c"batch.bytes".as_ptr(),
                c"12".as_ptr(),
                err.as_mut_ptr(),
                err.len(),
            );
            assert_eq!(r, kedge_result::KEDGE_CONFIG_INVALID_VALUE);
            assert_eq!(
                CStr::from_ptr(err.as_ptr()).to_bytes().len(),
                7,
                "truncated to the buffer, terminated"
            );
            let r = kedge_config_set(
                cfg,
                c"no.such".as_ptr(),
                c"1".as_ptr(),
                std::ptr::null_mut(),
                0,
            );
            assert_eq!(r, kedge_result::KEDGE_CONFIG_UNKNOWN_KEY);
            let bad_utf8 = [0xffu8, 0xfe, 0];
            let r = kedge_config_set(
                cfg,
                c"url".as_ptr(),
                bad_utf8.as_ptr() as *const c_char,
                err.as_mut_ptr(),
                1,
            );
            assert_eq!(r, kedge_result::KEDGE_INVALID_ARGUMENT);
            assert_eq!(err[0], 0, "a one-byte buffer holds just the terminator");
            assert_eq!(
                kedge_config_set(
                    cfg,
                    std::ptr::null(),
                    c"x".as_ptr(),
                    std::ptr::null_mut(),
                    0
                ),
                kedge_result::KEDGE_NULL_PARAMETER
            );
            assert_eq!(
                kedge_config_set_ca_pem(cfg, std::ptr::null(), 5, std::ptr::null_mut(), 0),
                kedge_result::KEDGE_NULL_PARAMETER
            );
            assert_eq!(
                kedge_config_set_ca_pem(cfg, b"junk".as_ptr(), 4, err.as_mut_ptr(), err.len()),
                kedge_result::KEDGE_TLS_CONFIG
            );
            assert_eq!(
                CStr::from_ptr(err.as_ptr()).to_bytes().len(),
                7,
                "truncated to the buffer, terminated"
            );
            assert_eq!(
                kedge_config_set_spool_key(cfg, [7u8; 31].as_ptr(), 31, err.as_mut_ptr(), 1),
                kedge_result::KEDGE_INVALID_ARGUMENT
            );
            assert_eq!(err[0], 0, "a one-byte buffer holds just the terminator");
            assert_eq!(
                kedge_config_set_spool_key(
                    cfg,
                    [7u8; 32].as_ptr(),
                    32,
                    err.as_mut_ptr(),
                    err.len()
                ),
                kedge_result::KEDGE_OK
            );
            let mut bound = 0u64;
            assert_eq!(
                kedge_config_memory_bound(cfg, &mut bound),
                kedge_result::KEDGE_OK
            );
            assert!(bound > 1 << 20);
            assert_eq!(
                kedge_config_memory_bound(std::ptr::null(), &mut bound),
                kedge_result::KEDGE_NULL_PARAMETER
            );
            let mut client: *mut kedge_client = std::ptr::null_mut();
            let r = kedge_client_new(cfg, &mut client, err.as_mut_ptr(), err.len());
            assert_eq!(r, kedge_result::KEDGE_CONFIG_INCOMPLETE, "no url");
            assert!(client.is_null(), "outputs are written only on success");
            kedge_config_free(cfg);
            kedge_config_free(std::ptr::null_mut());
            kedge_client_free(std::ptr::null_mut());
            let mut stats = kedge_stats::default();
            assert_eq!(
                kedge_client_stats(
                    std::ptr::null(),
                    &mut stats,
                    std::mem::size_of::<kedge_stats>()
                ),
                kedge_result::KEDGE_NULL_PARAMETER
            );
            assert_eq!(
                kedge_append(std::ptr::null_mut(), 0, b"x".as_ptr(), 1),
                kedge_result::KEDGE_NULL_PARAMETER
            );
        }
    }
}
