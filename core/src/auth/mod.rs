//! Authentication: where the bearer token on every ingest request comes from, and how it stays fresh.
//!
//! The client needs one call: [`TokenCache::get`] with its own `ureq::Agent` (so proxy, TLS roots and timeouts
//! are shared), and `force_refresh = true` after a 401 from Kusto. Everything else is configuration:
//! [`AuthConfig::set`] takes the `auth.*` and `connection_string` keys and [`AuthConfig::build`] turns
//! them into a cache around one [`TokenSource`]:
//!
//! | `auth.method` | source | what it sends |
//! |---|---|---|
//! | `token` | [`StaticToken`] | nothing: the configured token |
//! | `callback` | [`CallbackSource`] | nothing: the caller's function |
//! | `client_secret` | [`ClientCredentials`] | `POST {authority}/{tenant}/oauth2/v2.0/token` with the secret |
//! | `certificate` | [`ClientCredentials`] | the same with a signed RS256 client assertion |
//! | `workload_identity` | [`ClientCredentials`] | the same with the federated token file as the assertion |
//! | `managed_identity` | [`ManagedIdentity`] | `GET` IMDS with `Metadata: true` (Azure Arc when detected) |
//! | `arc` | [`ArcIdentity`] | `GET` the Arc agent, answer its challenge from the `.key` file |
//!
//! See `shared/kusto-protocol.md`, section "Authentication", for the wire format these follow.
//!
//! `token` and `callback` are always compiled in. The Entra ID flows (`client_secret`, `certificate`,
//! `workload_identity`) need the cargo feature `entra`, `managed_identity` and `arc` the feature
//! `managed-identity`; both are on by default. With one left out, a config asking for its methods fails with
//! `ConfigInvalidValue` naming the feature (see [`AuthConfig::build`]).

#[cfg(feature = "managed-identity")]
mod arc;
mod cache;
mod config;
mod connstr;
// Shared helpers: what of them is used depends on the token sources compiled in.
#[cfg_attr(
    not(all(feature = "entra", feature = "managed-identity")),
    allow(dead_code)
)]
pub(crate) mod encoding;
// Shared helpers: what of them is used depends on the token sources compiled in.
#[cfg_attr(
    not(all(feature = "entra", feature = "managed-identity")),
    allow(dead_code)
)]
mod http;
pub(crate) mod json;
#[cfg(feature = "entra")]
mod jwt;
mod metadata;
mod providers;

pub use crate::secret::SecretString;
#[cfg(feature = "managed-identity")]
pub use arc::{
    arc_detected, check_arc_key_path, ARC_DEFAULT_ENDPOINT, ARC_KEY_DIR, ARC_KEY_MAX_BYTES,
};
pub use cache::{RefreshPlan, RetryPolicy, TokenCache};
pub use config::{AuthConfig, Method, AUTH_KEYS};
pub use connstr::{parse_connection_string, ConnectionString, CredentialSpec};
#[cfg(feature = "entra")]
pub use jwt::CertificateCredential;
pub use metadata::{Cloud, CloudConfig, DEFAULT_AUTHORITY_HOST, DEFAULT_RESOURCE};
pub use providers::{
    parse_token_response, AccessToken, CallbackSource, FetchError, Lifetime, StaticToken,
    TokenCallback, TokenSource,
};
#[cfg(feature = "managed-identity")]
pub use providers::{ArcIdentity, ManagedIdentity, IMDS_DEFAULT_ENDPOINT};
#[cfg(feature = "entra")]
pub use providers::{Assertion, ClientCredentials};

/// What a token source gets for one fetch: the HTTP agent, the cloud it authenticates against and the clock.
pub struct FetchContext<'a> {
    /// The client's agent: proxy, TLS roots and timeouts are the client's.
    pub agent: &'a ureq::Agent,
    /// Authority host and resource, after config and cloud metadata.
    pub cloud: &'a Cloud,
    /// The client's clock: its wall time is what `expires_on` and assertion timestamps are measured against.
    pub clock: &'a dyn crate::clock::Clock,
}
