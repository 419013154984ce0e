//! kusto-edge's safe core: bounded-memory streaming and queued ingestion into Azure Data Explorer (Kusto).
//!
//! Protocol, batching, spool, auth and sinks, in safe Rust that knows nothing of C. The C library (the
//! `extern "C"` functions, the header) is the crate at the repository root, the only one allowed `unsafe`;
//! here `unsafe` does not compile.

#![warn(missing_docs)]
#![forbid(unsafe_code)]

pub mod auth;
mod batch;
mod certs;
pub mod client;
pub mod clock;
pub mod config;
pub mod crc32;
pub mod error;
pub mod gzip;
mod json;
pub mod json_check;
mod network;
pub mod response;
mod retry;
mod secret;
pub mod sink;
pub mod spool;
mod transport;
mod wire;

pub use client::{Client, ClientOptions, DeliveryReport, LinesTaken, Outcome, StatsSnapshot};
pub use config::{Config, LogLevel};
pub use error::{Error, ErrorKind};
