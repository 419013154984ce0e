//! One error type for the whole library: a kind that maps onto a C result code, and a message for a person that
//! says what to do.

use std::fmt;

/// What went wrong, in the classes the caller acts on. Numbered as the C `kedge_result` (never renumber).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u32)]
pub enum ErrorKind {
    /// A required pointer was NULL.
    NullParameter = 1,
    /// An argument is malformed: not UTF-8, out of range, unknown format.
    InvalidArgument = 2,
    /// `kedge_config_set` with a key that does not exist.
    ConfigUnknownKey = 3,
    /// A config value that does not parse or is out of range.
    ConfigInvalidValue = 4,
    /// A required config key is missing.
    ConfigIncomplete = 5,
    /// Plain http where it is not allowed, or a token that would go over plain http.
    InsecureTransport = 6,
    /// CA certificates unreadable or absent.
    TlsConfig = 7,
    /// A destination id the client does not have.
    InvalidDestination = 8,
    /// `destinations.max` reached.
    TooManyDestinations = 9,
    /// A record larger than the batch buffer (or the 4 MiB request limit).
    RecordTooLarge = 10,
    /// A record that can never be ingested: empty, not UTF-8, a line break inside a `json` line.
    InvalidRecord = 11,
    /// Network trouble, timeouts, throttling, 5xx: retries ran out, the data is kept.
    TransientFailure = 12,
    /// The destination is backing off after failures; the data is kept, nothing was sent now.
    BackingOff = 13,
    /// The service refused the data itself (`@permanent`): it must not be sent again as is.
    DataRejected = 14,
    /// Table or database missing, streaming ingestion off, endpoint missing: an operator can fix it.
    TargetNotReady = 15,
    /// 401/403: the token is missing, expired or lacks permission.
    AuthRefused = 16,
    /// The spool is full and its policy refuses new data.
    SpoolFull = 17,
    /// The spool's storage failed (disk full, read-only, I/O error).
    SpoolIo = 18,
    /// A client function was called from inside one of that client's callbacks.
    ReentrantCall = 19,
    /// Not delivered yet, but durable in the spool: it will be replayed. Not a failure of the data.
    Spooled = 20,
    /// The destination's lane has no room (its batch is full and `batch.sealed` chunks wait to be sent): the
    /// record was not taken. Call `poll` (or `flush`) and append it again.
    QueueFull = 21,
    /// A bug: an invariant did not hold.
    Internal = 98,
    /// A panic was caught at the C boundary.
    Panic = 99,
}

impl ErrorKind {
    /// True for the failures after which the same data may succeed later.
    pub fn keeps_data(self) -> bool {
        matches!(
            self,
            ErrorKind::TransientFailure
                | ErrorKind::BackingOff
                | ErrorKind::TargetNotReady
                | ErrorKind::AuthRefused
                | ErrorKind::Spooled
                | ErrorKind::SpoolFull
                | ErrorKind::SpoolIo
                | ErrorKind::QueueFull
        )
    }
}

/// An error with its class and a message for a person.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Error {
    /// The class, mapped to a C result code.
    pub kind: ErrorKind,
    /// What happened and what to do about it. Never contains a secret.
    pub message: String,
}

impl Error {
    /// Builds an error.
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        Error {
            kind,
            message: message.into(),
        }
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for Error {}
