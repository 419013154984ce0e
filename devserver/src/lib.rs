//! A Kusto-compatible streaming-ingest endpoint for tests and demos of kusto-edge.
//!
//! It speaks `POST /v1/rest/ingest/{database}/{table}?streamFormat=..[&mappingName=..]` over
//! HTTP/1.1 (plain or TLS with a generated test CA), checks requests the way the service does,
//! stores the records it accepts, answers with the service's success and OneApiError shapes, and
//! misbehaves on demand (scripted or seeded random faults). Out-of-process tests steer it through
//! `/_dev/...` endpoints on the same port (see `control`).
//!
//! With [`ServerConfig::dm`] it is also the data-management ("ingest-") endpoint for queued ingestion, over a
//! real Azure Storage server ([`azurite::Azurite`], the npm emulator run as a child process): `POST
//! /v1/rest/mgmt` answers `.get ingestion resources` with SAS URLs into Azurite it mints itself ([`sas`]) and
//! `.get kusto identity token`; an ingestor thread takes the messages off the ingestion queues, checks them
//! as the service would, ingests the blobs into the same store as streaming (so [`Server::records`] shows
//! both; [`Stats::records_queued`] / [`Stats::records_streamed`] tell them apart), posts notifications and
//! status rows, and records every protocol deviation as a violation ([`Server::dm_violations`]). See [`dm`].
//!
//! One thread per connection (at most [`MAX_CONNECTIONS`]), every socket read bounded by a timeout,
//! every body bounded by [`MAX_WIRE_BYTES`] and `max_raw_bytes`.

#![forbid(unsafe_code)]

pub mod auth;
pub mod azurite;
pub mod b64;
pub mod client;
pub mod dm;
pub mod faults;
pub mod gzip;
pub mod http;
pub mod ingest;
pub mod jwt;
pub mod proxy;
pub mod sas;
pub mod storage;
pub mod tls;
pub mod tools;

mod control;
mod entra;
mod managed_identity;
mod server;

pub use auth::{
    AuthConfig, AuthStats, GrantKind, IssuedToken, MetadataMode, TEST_CLIENT_CERT_PEM,
    TEST_CLIENT_KEY_PKCS1_PEM, TEST_CLIENT_KEY_PKCS8_PEM,
};
pub use dm::{DmConfig, DmFaults, DmResourceNames, DmStats, QueuedIngestion};
pub use faults::{Fault, Faults};
pub use proxy::{ConnectProxy, ProxyConfig};
pub use server::{RequestLog, Server, Stats, MAX_RECORD_HASHES};

use std::net::SocketAddr;

/// Most connections served at once; more are closed on accept.
pub const MAX_CONNECTIONS: usize = 64;
/// Largest request body read from the wire (compressed size); larger ones get 413 unread.
pub const MAX_WIRE_BYTES: usize = 16 * 1024 * 1024;

/// How a [`Server`] behaves.
#[derive(Clone, Debug)]
pub struct ServerConfig {
    /// Where to listen. Default `127.0.0.1:0` (any free port).
    pub bind: SocketAddr,
    /// Serve HTTPS with a freshly generated test CA (see [`Server::ca_pem`]).
    pub tls: bool,
    /// If set, ingest requests need `Authorization: Bearer <token>`; else auth is ignored.
    pub token: Option<String>,
    /// `Some(list)`: only these `(database, table)` exist. `None`: every table exists.
    pub tables: Option<Vec<(String, String)>>,
    /// `Some(list)`: `mappingName` must be one of these. `None`: any mapping is accepted.
    pub mappings: Option<Vec<String>>,
    /// Largest uncompressed body of one request (the service's 4 MB rule).
    pub max_raw_bytes: usize,
    /// Log one line per request to stderr.
    pub verbose: bool,
    /// Serve the Entra ID token endpoint, IMDS, Azure Arc and `/v1/rest/auth/metadata`, and
    /// accept tokens issued here on ingest (besides `token`). `None`: none of that (see `auth`).
    pub auth: Option<AuthConfig>,
    /// Also be the data-management endpoint (`POST /v1/rest/mgmt` and an ingestor) over this storage
    /// account (see `dm`). `None`: management commands are answered as the engine does (wrong endpoint).
    pub dm: Option<DmConfig>,
    /// With `tls`, sign the server certificate with this CA (e.g. the one Azurite's certificate comes
    /// from, so one CA PEM trusts both). `None`: a fresh CA.
    pub tls_ca: Option<tls::TestCa>,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            bind: SocketAddr::from(([127, 0, 0, 1], 0)),
            tls: false,
            token: None,
            tables: None,
            mappings: None,
            max_raw_bytes: 4 * 1024 * 1024,
            verbose: false,
            auth: None,
            dm: None,
            tls_ca: None,
        }
    }
}
