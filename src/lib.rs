//! kusto-edge: bounded-memory streaming ingestion into Azure Data Explorer (Kusto) for C/C++ firmware.
//!
//! The safe Rust core (everything but `ffi`) knows nothing of C. `ffi` is the only module with `extern "C"`,
//! raw pointers and `unsafe`.

#![warn(missing_docs)]

pub mod auth;
pub mod batch;
pub mod client;
pub mod config;
pub mod crc32;
pub mod error;
pub mod ffi;
pub mod gzip;
pub mod response;
pub mod retry;
pub mod spool;
pub mod transport;
pub mod wire;

pub use client::{Client, DeliveryReport, Outcome, StatsSnapshot};
pub use config::{Config, LogLevel};
pub use error::{Error, ErrorKind};
