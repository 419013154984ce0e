//! Authentication as kusto-edge meets it on real gateways: a Microsoft Entra ID token endpoint
//! (`entra`), managed identity on Azure VMs and Arc-enabled servers (`managed_identity`), the
//! cluster's `/v1/rest/auth/metadata`, and bearer-token checks on ingest with tokens this server
//! issued. Everything is off unless [`crate::ServerConfig::auth`] is set; the registration API below
//! works either way.

use std::collections::{HashMap, HashSet, VecDeque};
use std::path::PathBuf;
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use ring::rand::{SecureRandom, SystemRandom};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::CertificateDer;

use crate::http::{Request, Response};
use crate::ingest::{self, ApiError};
use crate::{b64, jwt, Server};

/// Kusto's well-known first-party client application (the `KustoClientAppId` of auth metadata).
pub const KUSTO_CLIENT_APP_ID: &str = "db662dc1-0cfe-4e1c-a843-19a68e65be58";
/// Tenant of Microsoft's first-party applications (`FirstPartyAuthorityUrl`).
pub const FIRST_PARTY_TENANT: &str = "f8cdef31-a31e-4b4a-93e4-5f571e91255a";
/// Client id of the system-assigned managed identity unless configured otherwise.
pub const DEFAULT_SYSTEM_IDENTITY: &str = "5a1f3a4e-0d6b-4c1e-9f27-3b6c0e8a2d71";
/// How long an Arc challenge file stays usable (it is also single-use).
pub const ARC_CHALLENGE_TTL: Duration = Duration::from_secs(60);
/// Most issued tokens remembered; the oldest are forgotten (and then refused) beyond this.
pub const MAX_TOKENS: usize = 10_000;
/// Most Arc challenges outstanding; the oldest are withdrawn (file deleted) beyond this.
pub const MAX_CHALLENGES: usize = 256;

/// The test certificate for certificate-credential clients (RSA 2048, self-signed).
pub const TEST_CLIENT_CERT_PEM: &str = include_str!("../fixtures/client-cert.pem");
/// The private key of [`TEST_CLIENT_CERT_PEM`], PKCS#8 (`BEGIN PRIVATE KEY`).
pub const TEST_CLIENT_KEY_PKCS8_PEM: &str = include_str!("../fixtures/client-key-pkcs8.pem");
/// The same key, PKCS#1 (`BEGIN RSA PRIVATE KEY`).
pub const TEST_CLIENT_KEY_PKCS1_PEM: &str = include_str!("../fixtures/client-key-pkcs1.pem");

/// What `GET /v1/rest/auth/metadata` does.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum MetadataMode {
    /// 200 with the metadata; `login_endpoint` defaults to the server's own URL.
    Serve { login_endpoint: Option<String> },
    /// 404, as clusters that do not serve it (clients fall back to public-cloud defaults).
    NotFound,
}

impl Default for MetadataMode {
    fn default() -> Self {
        MetadataMode::Serve {
            login_endpoint: None,
        }
    }
}

/// Authentication endpoints and issued-token checks on ingest (see the module docs).
#[derive(Clone, Debug)]
pub struct AuthConfig {
    /// The only tenant the token endpoint knows. Default `test-tenant`.
    pub tenant: String,
    /// Resource of the tokens; the scope must be `{resource}/.default`.
    /// Default `https://kusto.kusto.windows.net`.
    pub resource: String,
    /// Lifetime of every token issued. Default 3600 s.
    pub token_lifetime: Duration,
    /// The token endpoint sends `expires_in`/`ext_expires_in` as strings (v1 style).
    pub expires_in_as_string: bool,
    pub metadata: MetadataMode,
    /// Directory of Arc challenge files; created if missing. Default: a fresh temporary
    /// directory, removed when the server stops.
    pub arc_key_dir: Option<PathBuf>,
    /// Client id of the system-assigned managed identity (IMDS and Arc).
    pub system_identity_client_id: String,
}

impl Default for AuthConfig {
    fn default() -> Self {
        AuthConfig {
            tenant: "test-tenant".into(),
            resource: "https://kusto.kusto.windows.net".into(),
            token_lifetime: Duration::from_secs(3600),
            expires_in_as_string: false,
            metadata: MetadataMode::default(),
            arc_key_dir: None,
            system_identity_client_id: DEFAULT_SYSTEM_IDENTITY.into(),
        }
    }
}

/// How a token was obtained.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum GrantKind {
    /// Token endpoint, `client_secret`.
    Secret,
    /// Token endpoint, certificate-signed `client_assertion`.
    Assertion,
    /// Token endpoint, `client_assertion` = a federated token from [`Server::issue_federated_token`].
    Federated,
    /// Azure VM managed identity.
    Imds,
    /// Azure Arc managed identity.
    Arc,
}

impl GrantKind {
    pub fn name(self) -> &'static str {
        match self {
            GrantKind::Secret => "secret",
            GrantKind::Assertion => "assertion",
            GrantKind::Federated => "federated",
            GrantKind::Imds => "imds",
            GrantKind::Arc => "arc",
        }
    }
}

/// One access token this server handed out.
#[derive(Clone, Debug)]
pub struct IssuedToken {
    pub token: String,
    pub kind: GrantKind,
    pub client_id: String,
    pub resource: String,
    pub issued_at: Instant,
    /// Refused on ingest from this instant on.
    pub expires_at: Instant,
}

/// Counters since the server started (for tests; `GET /_dev/auth/stats` shows them as JSON).
#[derive(Clone, Debug, Default)]
pub struct AuthStats {
    /// Token-endpoint requests with a `client_secret` (answered either way).
    pub secret_requests: usize,
    /// Token-endpoint requests with a certificate `client_assertion`.
    pub assertion_requests: usize,
    /// Token-endpoint requests whose `client_assertion` is a federated token this server issued.
    pub federated_requests: usize,
    /// Token-endpoint requests refused before the credential could be told (bad tenant, no
    /// credential, ...), plus every refused request of the kinds above.
    pub refused_token_requests: usize,
    /// IMDS requests (with or without the `Metadata` header).
    pub imds_requests: usize,
    /// Arc requests without `Authorization`, answered with a challenge file.
    pub arc_challenges: usize,
    /// Arc requests with `Authorization: Basic ...` (answered either way).
    pub arc_token_requests: usize,
    /// `GET /v1/rest/auth/metadata`, served or 404.
    pub metadata_fetches: usize,
    /// Ingest requests refused because their issued token had expired.
    pub expired_token_rejections: usize,
    /// Ingest requests refused for a missing or unknown bearer token.
    pub invalid_token_rejections: usize,
    /// Every token issued (the newest [`MAX_TOKENS`]), oldest first.
    pub tokens: Vec<IssuedToken>,
}

impl AuthStats {
    /// Tokens issued by one kind of grant.
    pub fn issued(&self, kind: GrantKind) -> usize {
        self.tokens.iter().filter(|t| t.kind == kind).count()
    }

    /// The counters as JSON (tokens as `[{"kind","client_id","expired"}]`, without the secrets).
    pub fn to_json(&self) -> String {
        let now = Instant::now();
        let tokens: Vec<_> = self
            .tokens
            .iter()
            .map(|t| {
                serde_json::json!({
                    "kind": t.kind.name(), "client_id": t.client_id, "resource": t.resource,
                    "expired": now >= t.expires_at,
                })
            })
            .collect();
        serde_json::json!({
            "secret_requests": self.secret_requests,
            "assertion_requests": self.assertion_requests,
            "federated_requests": self.federated_requests,
            "refused_token_requests": self.refused_token_requests,
            "imds_requests": self.imds_requests,
            "arc_challenges": self.arc_challenges,
            "arc_token_requests": self.arc_token_requests,
            "metadata_fetches": self.metadata_fetches,
            "expired_token_rejections": self.expired_token_rejections,
            "invalid_token_rejections": self.invalid_token_rejections,
            "tokens": tokens,
        })
        .to_string()
    }
}

#[derive(Default)]
pub(crate) struct Client {
    pub(crate) secret: Option<String>,
    pub(crate) cert_der: Option<Vec<u8>>,
}

pub(crate) struct Challenge {
    pub(crate) path: PathBuf,
    pub(crate) created: Instant,
}

#[derive(Default)]
pub(crate) struct Inner {
    pub(crate) clients: HashMap<String, Client>,
    pub(crate) user_identities: HashSet<String>,
    /// Federated token -> client id.
    pub(crate) federated: HashMap<String, String>,
    pub(crate) tokens: VecDeque<IssuedToken>,
    /// Secret (the file contents) -> challenge.
    pub(crate) challenges: HashMap<String, Challenge>,
    pub(crate) key_dir: Option<PathBuf>,
    pub(crate) last_assertion: Option<String>,
    pub(crate) stats: AuthStats,
}

/// Auth state of a running server.
pub(crate) struct AuthState {
    pub(crate) enabled: bool,
    pub(crate) cfg: AuthConfig,
    /// `http://127.0.0.1:PORT` or `https://localhost:PORT`.
    pub(crate) server_url: String,
    pub(crate) verbose: bool,
    inner: Mutex<Inner>,
    rng: SystemRandom,
    /// A temporary key directory we made (removed on drop).
    owned_dir: Mutex<Option<PathBuf>>,
}

/// A random RFC 4122 version 4 uuid, lowercase (by the `uuid` crate).
pub(crate) fn uuid_v4() -> String {
    uuid::Uuid::new_v4().hyphenated().to_string()
}

/// Unix time in seconds.
pub(crate) fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

impl AuthState {
    pub(crate) fn new(cfg: Option<AuthConfig>, server_url: String, verbose: bool) -> AuthState {
        AuthState {
            enabled: cfg.is_some(),
            cfg: cfg.unwrap_or_default(),
            server_url,
            verbose,
            inner: Mutex::new(Inner::default()),
            rng: SystemRandom::new(),
            owned_dir: Mutex::new(None),
        }
    }

    pub(crate) fn inner(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub(crate) fn random_bytes(&self, n: usize) -> Vec<u8> {
        let mut b = vec![0u8; n];
        // SystemRandom only fails when the OS has no entropy source at all.
        self.rng.fill(&mut b).expect("OS random number generator");
        b
    }

    pub(crate) fn uuid(&self) -> String {
        uuid_v4()
    }

    pub(crate) fn lifetime_secs(&self) -> u64 {
        self.cfg.token_lifetime.as_secs()
    }

    /// Make, remember and return an access token.
    pub(crate) fn issue(&self, kind: GrantKind, client_id: &str, resource: &str) -> String {
        let now = unix_now();
        let claims = serde_json::json!({
            "aud": resource,
            "iss": format!("https://sts.windows.net/{}/", self.cfg.tenant),
            "iat": now, "nbf": now, "exp": now + self.lifetime_secs() as i64,
            "appid": client_id, "tid": self.cfg.tenant, "oid": client_id,
            "idtyp": "app", "kdev_grant": kind.name(),
        });
        let token = jwt::unsigned_lookalike(&claims, &self.random_bytes(32));
        let issued_at = Instant::now();
        let t = IssuedToken {
            token: token.clone(),
            kind,
            client_id: client_id.to_string(),
            resource: resource.to_string(),
            issued_at,
            expires_at: issued_at + self.cfg.token_lifetime,
        };
        let mut inner = self.inner();
        if inner.tokens.len() >= MAX_TOKENS {
            inner.tokens.pop_front();
        }
        inner.tokens.push_back(t);
        token
    }

    /// The directory for Arc challenge files, made on first use.
    pub(crate) fn key_dir(&self) -> std::io::Result<PathBuf> {
        if let Some(d) = self.inner().key_dir.clone() {
            return Ok(d);
        }
        let dir = match &self.cfg.arc_key_dir {
            Some(d) => {
                std::fs::create_dir_all(d)?;
                d.clone()
            }
            None => {
                let name = format!(
                    "kusto-devserver-arc-{}-{}",
                    std::process::id(),
                    b64::url_encode(&self.random_bytes(6))
                );
                let d = std::env::temp_dir().join(name);
                std::fs::create_dir(&d)?;
                #[cfg(unix)]
                {
                    use std::os::unix::fs::PermissionsExt;
                    std::fs::set_permissions(&d, std::fs::Permissions::from_mode(0o700))?;
                }
                *self.owned_dir.lock().unwrap_or_else(|e| e.into_inner()) = Some(d.clone());
                d
            }
        };
        let mut inner = self.inner();
        Ok(inner.key_dir.get_or_insert(dir).clone())
    }

    /// Route an auth request; `None` for every other path (and for all when auth is off).
    pub(crate) fn route(&self, req: &Request) -> Option<Response> {
        if !self.enabled {
            return None;
        }
        let path = req.path.as_str();
        let resp = if path == "/v1/rest/auth/metadata" && req.method == "GET" {
            self.metadata(req)
        } else if path == "/metadata/identity/oauth2/token" {
            crate::managed_identity::handle(self, req, false)
        } else if path == "/arc/metadata/identity/oauth2/token" {
            crate::managed_identity::handle(self, req, true)
        } else if let Some(tenant) = token_endpoint_tenant(path) {
            crate::entra::handle(self, req, &tenant)
        } else {
            self.control(req)?
        };
        if self.verbose {
            eprintln!("devserver: {} {} -> {}", req.method, req.path, resp.status);
        }
        Some(resp)
    }

    fn metadata(&self, req: &Request) -> Response {
        self.inner().stats.metadata_fetches += 1;
        let login = match &self.cfg.metadata {
            MetadataMode::NotFound => {
                let e = ApiError::new(
                    404,
                    "NotFound",
                    "Kusto.Common.Svc.Exceptions.PathNotFoundException",
                    "Path '/v1/rest/auth/metadata' was not found.",
                    true,
                );
                let crid = req.header("x-ms-client-request-id").unwrap_or("");
                return crate::server::error_response(&e, crid, &self.uuid());
            }
            MetadataMode::Serve { login_endpoint } => login_endpoint
                .clone()
                .unwrap_or_else(|| self.server_url.clone()),
        };
        let login = login.trim_end_matches('/');
        let q = |v: &str| serde_json::Value::from(v).to_string();
        Response::json(
            200,
            format!(
                concat!(
                    r#"{{"AzureAD":{{"LoginEndpoint":{},"LoginMfaRequired":false,"KustoClientAppId":{},"#,
                    r#""KustoClientRedirectUri":"https://microsoft/kustoclient","KustoServiceResourceId":{},"#,
                    r#""FirstPartyAuthorityUrl":{}}},"dSTS":{{}}}}"#
                ),
                q(login),
                q(KUSTO_CLIENT_APP_ID),
                q(&self.cfg.resource),
                q(&format!("{login}/{FIRST_PARTY_TENANT}")),
            ),
        )
    }

    /// `/_dev/auth/...`: the registration API for tests that run the binary.
    fn control(&self, req: &Request) -> Option<Response> {
        let path = req.path.strip_prefix("/_dev/auth/")?;
        let id = req.query_param("client_id").unwrap_or_default();
        let need_id = || Response::text(400, "need ?client_id=ID\n");
        let ok = |t: &str| Response::text(200, format!("{t}\n"));
        Some(match (req.method.as_str(), path) {
            ("GET", "stats") => Response::json(200, self.stats().to_json()),
            ("POST", "expire-all") => {
                self.expire_all();
                ok("expired every token")
            }
            ("POST", "secret-client") => match req.query_param("secret") {
                Some(s) if !id.is_empty() => {
                    self.register_secret(&id, &s);
                    ok("registered")
                }
                _ => Response::text(400, "need ?client_id=ID&secret=S\n"),
            },
            ("POST", "cert-client") if !id.is_empty() => {
                match self.register_cert(&id, &String::from_utf8_lossy(&req.body)) {
                    Ok(()) => ok("registered"),
                    Err(e) => Response::text(400, format!("{e}\n")),
                }
            }
            ("POST", "user-identity") if !id.is_empty() => {
                self.inner().user_identities.insert(id);
                ok("registered")
            }
            ("POST", "federated-token") if !id.is_empty() => {
                Response::text(200, self.federated_token(&id))
            }
            ("POST", "cert-client" | "user-identity" | "federated-token") => need_id(),
            _ => Response::text(
                404,
                format!("no auth control endpoint {} {}\n", req.method, req.path),
            ),
        })
    }

    pub(crate) fn register_secret(&self, client_id: &str, secret: &str) {
        self.inner()
            .clients
            .entry(client_id.to_string())
            .or_default()
            .secret = Some(secret.to_string());
    }

    pub(crate) fn register_cert(&self, client_id: &str, cert_pem: &str) -> Result<(), String> {
        let der = CertificateDer::from_pem_slice(cert_pem.as_bytes())
            .map_err(|e| format!("not a PEM certificate: {e:?}"))?;
        webpki::EndEntityCert::try_from(&der)
            .map_err(|e| format!("not a usable X.509 certificate: {e:?}"))?;
        self.inner()
            .clients
            .entry(client_id.to_string())
            .or_default()
            .cert_der = Some(der.as_ref().to_vec());
        Ok(())
    }

    pub(crate) fn federated_token(&self, client_id: &str) -> String {
        let now = unix_now();
        let claims = serde_json::json!({
            "aud": ["api://AzureADTokenExchange"],
            "iss": format!("{}/federation", self.server_url),
            "sub": format!("system:serviceaccount:default:{client_id}"),
            "iat": now, "nbf": now, "exp": now + 3600,
            "jti": self.uuid(),
        });
        let token = jwt::unsigned_lookalike(&claims, &self.random_bytes(32));
        self.inner()
            .federated
            .insert(token.clone(), client_id.to_string());
        token
    }

    pub(crate) fn stats(&self) -> AuthStats {
        let inner = self.inner();
        let mut s = inner.stats.clone();
        s.tokens = inner.tokens.iter().cloned().collect();
        s
    }

    pub(crate) fn expire_all(&self) {
        let now = Instant::now();
        for t in self.inner().tokens.iter_mut() {
            t.expires_at = t.expires_at.min(now);
        }
    }

    /// The ingest path's bearer check: the static token or an unexpired token issued here.
    pub(crate) fn check_ingest(
        &self,
        req: &Request,
        static_token: Option<&str>,
    ) -> Result<(), ApiError> {
        if !self.enabled {
            return ingest::check_auth(req, static_token);
        }
        let got = req.header("authorization").unwrap_or("");
        let token = match got.split_once(' ') {
            Some((scheme, t)) if scheme.eq_ignore_ascii_case("bearer") => t.trim(),
            _ => {
                self.inner().stats.invalid_token_rejections += 1;
                return Err(ingest::unauthorized(
                    "Authorization header with a bearer token is required.",
                ));
            }
        };
        if static_token == Some(token) {
            return Ok(());
        }
        let mut inner = self.inner();
        let found = inner
            .tokens
            .iter()
            .rev()
            .find(|t| t.token == token)
            .map(|t| t.expires_at);
        match found {
            Some(exp) if Instant::now() < exp => Ok(()),
            Some(_) => {
                inner.stats.expired_token_rejections += 1;
                Err(ingest::unauthorized(
                    "The bearer token has expired: acquire a new one.",
                ))
            }
            None => {
                inner.stats.invalid_token_rejections += 1;
                Err(ingest::unauthorized(
                    "The bearer token is invalid or expired.",
                ))
            }
        }
    }
}

impl Drop for AuthState {
    fn drop(&mut self) {
        let owned = self.owned_dir.get_mut().unwrap_or_else(|e| e.into_inner());
        if let Some(d) = owned.take() {
            let _ = std::fs::remove_dir_all(d);
        }
    }
}

/// `/{tenant}/oauth2/v2.0/token` -> the tenant, percent-decoded.
fn token_endpoint_tenant(path: &str) -> Option<String> {
    let t = path.strip_suffix("/oauth2/v2.0/token")?.strip_prefix('/')?;
    (!t.is_empty() && !t.contains('/')).then(|| crate::http::percent_decode(t, false))
}

/// The auth side of [`Server`]. Registration works whether or not auth is configured; the
/// endpoints answer only when [`crate::ServerConfig::auth`] is set.
impl Server {
    /// Let `client_id` get tokens from the token endpoint with `client_secret=secret`.
    pub fn register_secret_client(&self, client_id: &str, secret: &str) {
        self.shared.auth.register_secret(client_id, secret);
    }

    /// Let `client_id` get tokens with assertions signed by the key of this certificate (PEM).
    /// Panics if `cert_pem` holds no usable certificate (a bug in the calling test).
    pub fn register_cert_client(&self, client_id: &str, cert_pem: &str) {
        if let Err(e) = self.shared.auth.register_cert(client_id, cert_pem) {
            panic!("register_cert_client({client_id:?}): {e}");
        }
    }

    /// Add a user-assigned managed identity (IMDS/Arc `client_id=`).
    pub fn register_user_assigned_identity(&self, client_id: &str) {
        self.shared
            .auth
            .inner()
            .user_identities
            .insert(client_id.to_string());
    }

    /// A JWT-shaped federated token (what Kubernetes writes into `AZURE_FEDERATED_TOKEN_FILE`)
    /// that the token endpoint accepts as `client_assertion` for `client_id`.
    pub fn issue_federated_token(&self, client_id: &str) -> String {
        self.shared.auth.federated_token(client_id)
    }

    /// Auth counters and issued tokens.
    pub fn auth_stats(&self) -> AuthStats {
        self.shared.auth.stats()
    }

    /// The last `client_assertion` the token endpoint received (certificate or federated).
    pub fn last_client_assertion(&self) -> Option<String> {
        self.shared.auth.inner().last_assertion.clone()
    }

    /// Make every token issued so far expired now (later ones are unaffected).
    pub fn expire_all_tokens(&self) {
        self.shared.auth.expire_all();
    }

    /// `{url}/{tenant}/oauth2/v2.0/token`.
    pub fn token_endpoint(&self) -> String {
        format!(
            "{}/{}/oauth2/v2.0/token",
            self.url(),
            self.shared.auth.cfg.tenant
        )
    }

    /// `{url}/metadata/identity/oauth2/token` (IMDS).
    pub fn imds_endpoint(&self) -> String {
        format!("{}/metadata/identity/oauth2/token", self.url())
    }

    /// `{url}/arc/metadata/identity/oauth2/token` (Azure Arc `IDENTITY_ENDPOINT`).
    pub fn arc_endpoint(&self) -> String {
        format!("{}/arc/metadata/identity/oauth2/token", self.url())
    }

    /// Client id of the system-assigned managed identity.
    pub fn system_identity_client_id(&self) -> String {
        self.shared.auth.cfg.system_identity_client_id.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tenant_from_path() {
        assert_eq!(
            token_endpoint_tenant("/test-tenant/oauth2/v2.0/token").as_deref(),
            Some("test-tenant")
        );
        assert_eq!(token_endpoint_tenant("//oauth2/v2.0/token"), None);
        assert_eq!(token_endpoint_tenant("/a/b/oauth2/v2.0/token"), None);
        assert_eq!(token_endpoint_tenant("/t/oauth2/token"), None);
    }

    #[test]
    fn uuid_shape() {
        let s = AuthState::new(None, String::new(), false);
        let u = s.uuid();
        assert_eq!(u.len(), 36, "{u}");
        assert_eq!(&u[14..15], "4");
        assert!(matches!(&u[19..20], "8" | "9" | "a" | "b"), "{u}");
    }
}
