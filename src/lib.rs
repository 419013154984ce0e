//! kusto-edge: bounded-memory streaming ingestion into Azure Data Explorer (Kusto) for C/C++ firmware.
//!
//! The safe Rust core (everything but `ffi`) knows nothing of C. `ffi` is the only module with `extern "C"`
//! functions and raw pointers, and the only one allowed `unsafe`: anywhere else it does not compile.

#![warn(missing_docs)]
#![deny(unsafe_code)]

pub mod auth;
pub mod batch;
pub mod certs;
pub mod client;
pub mod clock;
pub mod config;
pub mod crc32;
pub mod error;
#[allow(unsafe_code)]
pub mod ffi;
pub mod gzip;
pub mod json_check;
pub mod network;
pub mod response;
pub mod retry;
pub mod secret;
pub mod sink;
pub mod spool;
pub mod transport;
pub mod wire;

pub use client::{Client, ClientOptions, DeliveryReport, Outcome, StatsSnapshot};
pub use config::{Config, LogLevel};
pub use error::{Error, ErrorKind};
