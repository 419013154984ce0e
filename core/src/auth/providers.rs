//! Token sources: where a fresh access token comes from. Each one makes at most one attempt per `fetch` (the cache
//! retries), says in its errors what to fix, and never puts a secret, an assertion or a token into a message.

//!
//! The static token and the callback are always here; the Entra ID client credentials need the cargo feature
//! `entra`, IMDS and Azure Arc the feature `managed-identity`.

use std::fmt;
#[cfg(any(feature = "entra", feature = "managed-identity"))]
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use crate::error::{Error, ErrorKind};

#[cfg(feature = "managed-identity")]
use super::arc;
#[cfg(any(feature = "entra", feature = "managed-identity"))]
use super::http::{self, Reply};
use super::json::{self, Scalar};
#[cfg(feature = "entra")]
use super::jwt::CertificateCredential;
use super::FetchContext;
use crate::secret::SecretString;
#[cfg(any(feature = "entra", feature = "managed-identity"))]
use crate::wire::percent_encode;

/// Default IMDS token endpoint on Azure VMs.
#[cfg(feature = "managed-identity")]
pub const IMDS_DEFAULT_ENDPOINT: &str = "http://169.254.169.254/metadata/identity/oauth2/token";
/// IMDS API version the SDKs use (`expires_in` / `expires_on` come back as strings).
#[cfg(feature = "managed-identity")]
const IMDS_API_VERSION: &str = "2018-02-01";
/// Azure Arc's API version.
#[cfg(feature = "managed-identity")]
const ARC_API_VERSION: &str = "2020-06-01";
/// Largest federated token file read.
#[cfg(feature = "entra")]
const FEDERATED_TOKEN_MAX_BYTES: u64 = 64 * 1024;

/// How long a token lives, as the source knows it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Lifetime {
    /// A static token: used until Kusto refuses it.
    Forever,
    /// Nobody said (a callback that returned 0): reused for a short while, then asked again.
    Unknown,
    /// Valid for this long from when it was fetched.
    For(Duration),
}

/// A token as a source hands it over.
#[derive(Debug)]
pub struct AccessToken {
    /// The bearer token.
    pub token: SecretString,
    /// How long it is valid from now.
    pub lifetime: Lifetime,
    /// `refresh_in`: when the issuer wants it refreshed, if it said.
    pub refresh_in: Option<Duration>,
    /// Issued by a managed identity endpoint: long-lived tokens are refreshed at half-life, as MSAL does.
    pub managed_identity: bool,
}

/// A failed fetch: the error, and how long the server asked us to wait (`Retry-After`) before trying again.
#[derive(Debug)]
pub struct FetchError {
    /// What went wrong; `TransientFailure` is retried, anything else is not.
    pub error: Error,
    /// The server's `Retry-After`, when it sent one.
    pub retry_after: Option<Duration>,
}

impl From<Error> for FetchError {
    fn from(error: Error) -> Self {
        FetchError {
            error,
            retry_after: None,
        }
    }
}

/// Something that can fetch a token. Implementations make one attempt; [`super::TokenCache`] decides when to call,
/// retries transient failures and keeps the result.
pub trait TokenSource: Send + Sync + fmt::Debug {
    /// Fetches a new token.
    fn fetch(&self, ctx: &FetchContext<'_>) -> Result<AccessToken, FetchError>;
    /// False when a new fetch cannot give a different token (a static token): a 401 then stays a 401.
    fn can_refresh(&self) -> bool {
        true
    }
    /// False when the source needs no authority host or resource, so cloud metadata is not fetched for it.
    fn needs_cloud(&self) -> bool {
        true
    }
    /// A short name for messages: "client secret", "managed identity (IMDS)".
    fn name(&self) -> &'static str;
}

/// Seconds since the Unix epoch by the client's wall clock (0 before it).
fn unix_secs(ctx: &FetchContext<'_>) -> u64 {
    crate::clock::unix_ms(ctx.clock.wall()) / 1000
}

/// The one check of a token's text, wherever a token comes from (config, connection string, callback, token
/// endpoint, federated token file): it is sent as an HTTP header value or a form field, so printable ASCII
/// without spaces, and not absurdly long (32 KiB).
pub(crate) fn is_token_text(t: &str) -> bool {
    !t.is_empty() && t.len() <= 32 * 1024 && t.bytes().all(|b| (0x21..0x7f).contains(&b))
}

// ---------------------------------------------------------------------------------------------------------------
// Static token and callback

/// A fixed token from config (`auth.token`, or a connection string's `User Token` / `Application Token`).
pub struct StaticToken {
    token: SecretString,
}

impl StaticToken {
    /// Wraps the token; it must be header-safe (printable ASCII, no spaces).
    pub fn new(token: SecretString) -> Result<Self, Error> {
        if !is_token_text(token.expose()) {
            return Err(Error::new(
                ErrorKind::ConfigInvalidValue,
                "auth.token: a token is printable ASCII without spaces",
            ));
        }
        Ok(StaticToken { token })
    }
}

impl fmt::Debug for StaticToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("StaticToken(***)")
    }
}

impl TokenSource for StaticToken {
    fn fetch(&self, _: &FetchContext<'_>) -> Result<AccessToken, FetchError> {
        Ok(AccessToken {
            token: self.token.clone(),
            lifetime: Lifetime::Forever,
            refresh_in: None,
            managed_identity: false,
        })
    }
    fn can_refresh(&self) -> bool {
        false
    }
    fn needs_cloud(&self) -> bool {
        false
    }
    fn name(&self) -> &'static str {
        "static token"
    }
}

/// The caller's token function: returns the token and its expiry in Unix seconds (0 = unknown), or a message.
/// The FFI wraps a C callback in one of these.
pub type TokenCallback = Arc<dyn Fn() -> Result<(String, u64), String> + Send + Sync>;

/// Tokens from the caller's function.
pub struct CallbackSource {
    callback: TokenCallback,
}

impl CallbackSource {
    /// Wraps the callback.
    pub fn new(callback: TokenCallback) -> Self {
        CallbackSource { callback }
    }
}

impl fmt::Debug for CallbackSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("CallbackSource")
    }
}

impl TokenSource for CallbackSource {
    fn fetch(&self, ctx: &FetchContext<'_>) -> Result<AccessToken, FetchError> {
        let (token, expires_on) = (self.callback)().map_err(|m| {
            // The caller's own words, bounded: they are logged and returned to C.
            Error::new(
                ErrorKind::TransientFailure,
                format!("the token callback failed: {}", clean(&m, 256)),
            )
        })?;
        let token = SecretString::new(token);
        if !is_token_text(token.expose()) {
            return Err(Error::new(
                ErrorKind::AuthRefused,
                "the token callback returned an empty token or one with spaces or non-ASCII characters",
            )
            .into());
        }
        let lifetime = if expires_on == 0 {
            Lifetime::Unknown
        } else {
            let now = unix_secs(ctx);
            if expires_on <= now {
                return Err(Error::new(
                    ErrorKind::AuthRefused,
                    format!("the token callback returned a token that expired {} s ago (check the device clock and the callback)", now - expires_on),
                )
                .into());
            }
            Lifetime::For(Duration::from_secs(expires_on - now))
        };
        Ok(AccessToken {
            token,
            lifetime,
            refresh_in: None,
            managed_identity: false,
        })
    }
    fn needs_cloud(&self) -> bool {
        false
    }
    fn name(&self) -> &'static str {
        "token callback"
    }
}

// ---------------------------------------------------------------------------------------------------------------
// Token responses

/// Reads a token endpoint's success body: `access_token`, `token_type`, `expires_in` (number or string, as v1 and
/// IMDS write it) or else `expires_on` (Unix seconds, measured against `now_unix`, the wall clock's seconds since
/// the epoch), and optional `refresh_in`.
pub fn parse_token_response(
    body: &[u8],
    managed_identity: bool,
    now_unix: u64,
) -> Result<AccessToken, Error> {
    let bad = |why: &str| {
        Error::new(
            ErrorKind::TransientFailure,
            format!("the token endpoint's answer is unreadable ({why})"),
        )
    };
    let mut token: Option<SecretString> = None;
    let mut token_type_ok = true;
    let (mut expires_in, mut expires_on, mut refresh_in) = (None, None, None);
    json::walk(body, |path, v| match (path, v) {
        ("access_token", Scalar::Str(s)) => token = Some(SecretString::new(s)),
        ("token_type", Scalar::Str(s)) => token_type_ok = s.eq_ignore_ascii_case("bearer"),
        ("expires_in", v) => expires_in = v.as_u64(),
        ("expires_on", v) => expires_on = v.as_u64(),
        ("refresh_in", v) => refresh_in = v.as_u64(),
        _ => {}
    })
    .map_err(|_| bad("not a JSON object"))?;
    let token = token.ok_or_else(|| bad("no access_token"))?;
    if !is_token_text(token.expose()) {
        return Err(bad("access_token is not a header-safe string"));
    }
    if !token_type_ok {
        return Err(Error::new(
            ErrorKind::AuthRefused,
            "the token endpoint issued a token that is not a Bearer token",
        ));
    }
    let lifetime = match (expires_in, expires_on) {
        (Some(s), _) => s,
        (None, Some(on)) => on.saturating_sub(now_unix),
        (None, None) => return Err(bad("no expires_in")),
    };
    if lifetime == 0 {
        return Err(bad("the token has already expired"));
    }
    Ok(AccessToken {
        token,
        lifetime: Lifetime::For(Duration::from_secs(lifetime)),
        refresh_in: refresh_in
            .filter(|&r| r > 0 && r < lifetime)
            .map(Duration::from_secs),
        managed_identity,
    })
}

/// Control characters out, length bounded: text from a server or caller fit for one log line.
fn clean(s: &str, max: usize) -> String {
    let mut out = String::new();
    for c in s.chars() {
        if out.len() >= max {
            out.push('…');
            break;
        }
        out.push(if c.is_control() { ' ' } else { c });
    }
    out.split_whitespace().collect::<Vec<_>>().join(" ")
}

#[cfg(any(feature = "entra", feature = "managed-identity"))]
/// `error` and `error_description` of an OAuth error body, cleaned, with every secret we sent cut out in case
/// the server echoes it.
fn error_detail(body: &[u8], secrets: &[&str]) -> String {
    let (mut code, mut desc) = (String::new(), String::new());
    let _ = json::walk(body, |path, v| match (path, v) {
        ("error", Scalar::Str(s)) => code = clean(&s, 64),
        ("error_description", Scalar::Str(s)) => desc = s,
        ("message", Scalar::Str(s)) if desc.is_empty() => desc = s,
        _ => {}
    });
    for s in secrets {
        if s.len() >= 4 {
            desc = desc.replace(s, "***");
        }
    }
    let desc = clean(&desc, 400);
    match (code.is_empty(), desc.is_empty()) {
        (true, true) => String::new(),
        (false, true) => format!(", {code}"),
        (true, false) => format!(": {desc}"),
        (false, false) => format!(", {code}: {desc}"),
    }
}

#[cfg(any(feature = "entra", feature = "managed-identity"))]
/// What a failed answer means. `transient` lists statuses that are passing on this endpoint besides 408, 429
/// and 5xx; everything else is a refusal that only a config change (or a clock fix) can cure.
fn failure(
    reply: &Reply,
    who: &str,
    hint: &str,
    secrets: &[&str],
    transient: &[u16],
) -> FetchError {
    let detail = error_detail(&reply.body.0, secrets);
    let status = reply.status;
    let is_transient = matches!(status, 408 | 429 | 500..=599) || transient.contains(&status);
    let retry_after = reply
        .retry_after
        .as_deref()
        .and_then(|v| v.trim().parse::<u64>().ok())
        .map(Duration::from_secs);
    let error = if is_transient {
        Error::new(
            ErrorKind::TransientFailure,
            format!("{who} is unavailable (HTTP {status}{detail}); will retry"),
        )
    } else if (300..400).contains(&status) {
        Error::new(
            ErrorKind::AuthRefused,
            format!(
                "{who} answered with a redirect (HTTP {status}), which is not followed: {hint}"
            ),
        )
    } else {
        Error::new(
            ErrorKind::AuthRefused,
            format!("{who} refused (HTTP {status}{detail}): {hint}"),
        )
    };
    FetchError { error, retry_after }
}

#[cfg(any(feature = "entra", feature = "managed-identity"))]
fn read_success(
    reply: &Reply,
    who: &str,
    managed_identity: bool,
    now_unix: u64,
) -> Result<AccessToken, FetchError> {
    if reply.truncated {
        return Err(Error::new(
            ErrorKind::TransientFailure,
            format!("{who} sent an answer larger than 64 KiB or cut short; will retry"),
        )
        .into());
    }
    parse_token_response(&reply.body.0, managed_identity, now_unix).map_err(|mut e| {
        e.message = format!("{who}: {}", e.message);
        e.into()
    })
}

// ---------------------------------------------------------------------------------------------------------------
// Entra ID client credentials

/// How a client proves who it is to Entra ID.
#[cfg(feature = "entra")]
pub enum Assertion {
    /// A client secret (`client_secret=`).
    Secret(SecretString),
    /// A certificate: a signed JWT (`client_assertion=`), made fresh for every request.
    Certificate(CertificateCredential),
    /// Workload identity: the Kubernetes-projected token in this file, re-read on every fetch because it rotates.
    FederatedTokenFile(PathBuf),
}

#[cfg(feature = "entra")]
impl fmt::Debug for Assertion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Assertion::Secret(_) => f.write_str("Secret(***)"),
            Assertion::Certificate(c) => write!(f, "Certificate(x5t={})", c.x5t()),
            Assertion::FederatedTokenFile(p) => write!(f, "FederatedTokenFile({})", p.display()),
        }
    }
}

/// Entra ID client credentials flow: `POST {authority}/{tenant}/oauth2/v2.0/token`.
#[cfg(feature = "entra")]
#[derive(Debug)]
pub struct ClientCredentials {
    tenant: String,
    client_id: String,
    assertion: Assertion,
    /// `AZURE_AUTHORITY_HOST` for workload identity: the webhook's choice wins over metadata, not over config.
    authority_override: Option<String>,
}

#[cfg(feature = "entra")]
impl ClientCredentials {
    /// A client of `tenant` (GUID or domain) with id `client_id`.
    pub fn new(
        tenant: &str,
        client_id: &str,
        assertion: Assertion,
        authority_override: Option<String>,
    ) -> Self {
        ClientCredentials {
            tenant: tenant.to_owned(),
            client_id: client_id.to_owned(),
            assertion,
            authority_override,
        }
    }

    /// The token endpoint for an authority host.
    pub fn token_url(&self, authority_host: &str) -> String {
        format!(
            "{}/{}/oauth2/v2.0/token",
            authority_host.trim_end_matches('/'),
            self.tenant
        )
    }

    /// The form body, exactly as `shared/kusto-protocol.md` gives it. It lives in a [`SecretString`] because
    /// it carries the secret or assertion; `now_unix` (wall clock, seconds since the epoch) dates an assertion.
    pub fn form(&self, token_url: &str, scope: &str, now_unix: u64) -> Result<SecretString, Error> {
        let mut form = SecretString::new(String::with_capacity(1024));
        let field = |form: &mut SecretString, k: &str, v: &str| {
            // Presized for the worst case (every byte %XX) so encoding never reallocates and leaves an unzeroed
            // copy of the value behind; the piece itself is a secret, zeroed when dropped.
            let mut s = String::with_capacity(k.len() + 2 + 3 * v.len());
            if !form.is_empty() {
                s.push('&');
            }
            s.push_str(k);
            s.push('=');
            percent_encode(&mut s, v);
            form.push_str(SecretString::new(s).expose());
        };
        field(&mut form, "grant_type", "client_credentials");
        field(&mut form, "client_id", &self.client_id);
        match &self.assertion {
            Assertion::Secret(s) => field(&mut form, "client_secret", s.expose()),
            Assertion::Certificate(c) => {
                let jwt = c.assertion(token_url, &self.client_id, now_unix)?;
                field(&mut form, "client_assertion_type", JWT_BEARER);
                field(&mut form, "client_assertion", jwt.expose());
            }
            Assertion::FederatedTokenFile(p) => {
                let jwt = read_federated_token(p)?;
                field(&mut form, "client_assertion_type", JWT_BEARER);
                field(&mut form, "client_assertion", jwt.expose());
            }
        }
        field(&mut form, "scope", scope);
        Ok(form)
    }

    fn hint(&self) -> String {
        match &self.assertion {
            Assertion::Secret(_) => format!(
                "check auth.tenant ('{}'), auth.client_id ('{}') and auth.client_secret (the secret's value, not its id; it may have expired)",
                self.tenant, self.client_id
            ),
            Assertion::Certificate(c) => format!(
                "check auth.tenant ('{}'), auth.client_id ('{}'), that the certificate with thumbprint {} is uploaded to the app registration, and that the device clock is right",
                self.tenant, self.client_id, c.thumbprint_hex()
            ),
            Assertion::FederatedTokenFile(_) => format!(
                "check AZURE_TENANT_ID ('{}'), AZURE_CLIENT_ID ('{}'), the federated credential of the app registration, and that the token file is current",
                self.tenant, self.client_id
            ),
        }
    }
}

#[cfg(feature = "entra")]
const JWT_BEARER: &str = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer";

#[cfg(feature = "entra")]
fn read_federated_token(path: &std::path::Path) -> Result<SecretString, Error> {
    use std::io::Read;
    let refused = |why: String| {
        Error::new(
            ErrorKind::AuthRefused,
            format!(
                "workload identity: the federated token file '{}' {why}",
                path.display()
            ),
        )
    };
    let f = std::fs::File::open(path).map_err(|e| refused(format!("cannot be read: {e}")))?;
    let mut s = String::with_capacity(8192);
    f.take(FEDERATED_TOKEN_MAX_BYTES + 1)
        .read_to_string(&mut s)
        .map_err(|e| refused(format!("cannot be read: {e}")))?;
    let s = SecretString::new(s);
    if s.expose().len() as u64 > FEDERATED_TOKEN_MAX_BYTES {
        return Err(refused("is larger than 64 KiB".into()));
    }
    let t = s.expose().trim();
    if !is_token_text(t) {
        return Err(refused("is empty or not a token".into()));
    }
    Ok(SecretString::new(t))
}

#[cfg(feature = "entra")]
impl TokenSource for ClientCredentials {
    fn fetch(&self, ctx: &FetchContext<'_>) -> Result<AccessToken, FetchError> {
        let authority = self
            .authority_override
            .as_deref()
            .filter(|_| !ctx.cloud.authority_explicit)
            .unwrap_or(&ctx.cloud.authority_host);
        let url = self.token_url(authority);
        let form = self.form(&url, &ctx.cloud.scope(), unix_secs(ctx))?;
        let reply = http::post_form(ctx.agent, &url, &form)?;
        if reply.status == 200 {
            return read_success(&reply, "Entra ID", false, unix_secs(ctx));
        }
        let secret;
        let secrets: &[&str] = match &self.assertion {
            Assertion::Secret(s) => {
                secret = s.expose();
                std::slice::from_ref(&secret)
            }
            _ => &[],
        };
        let hint = if reply.status == 404 {
            format!("the token endpoint {url} does not exist: check auth.authority_host and auth.tenant")
        } else {
            self.hint()
        };
        Err(failure(&reply, "Entra ID", &hint, secrets, &[]))
    }
    fn name(&self) -> &'static str {
        match self.assertion {
            Assertion::Secret(_) => "client secret",
            Assertion::Certificate(_) => "client certificate",
            Assertion::FederatedTokenFile(_) => "workload identity",
        }
    }
}

// ---------------------------------------------------------------------------------------------------------------
// Managed identity

/// Appends `key=value` to a URL's query, percent-encoding the value.
#[cfg(feature = "managed-identity")]
fn query(url: &mut String, key: &str, value: &str) {
    url.push(if url.contains('?') { '&' } else { '?' });
    url.push_str(key);
    url.push('=');
    percent_encode(url, value);
}

/// Managed identity on an Azure VM, through IMDS.
#[cfg(feature = "managed-identity")]
#[derive(Debug)]
pub struct ManagedIdentity {
    endpoint: String,
    client_id: Option<String>,
}

#[cfg(feature = "managed-identity")]
impl ManagedIdentity {
    /// IMDS at `endpoint` (normally [`IMDS_DEFAULT_ENDPOINT`]); `client_id` picks a user-assigned identity.
    pub fn new(endpoint: &str, client_id: Option<&str>) -> Result<Self, Error> {
        http::check_url(endpoint, "auth.imds_endpoint")?;
        Ok(ManagedIdentity {
            endpoint: endpoint.to_owned(),
            client_id: client_id.map(str::to_owned),
        })
    }

    /// The request URL: `{endpoint}?api-version=2018-02-01&resource={resource}[&client_id=..]`.
    pub fn url(&self, resource: &str) -> String {
        let mut url = self.endpoint.clone();
        query(&mut url, "api-version", IMDS_API_VERSION);
        query(&mut url, "resource", resource);
        if let Some(c) = &self.client_id {
            query(&mut url, "client_id", c);
        }
        url
    }
}

#[cfg(feature = "managed-identity")]
impl TokenSource for ManagedIdentity {
    fn fetch(&self, ctx: &FetchContext<'_>) -> Result<AccessToken, FetchError> {
        let reply = http::get(
            ctx.agent,
            &self.url(&ctx.cloud.resource),
            &[("Metadata", "true")],
        )?;
        if reply.status == 200 {
            return read_success(&reply, "IMDS", true, unix_secs(ctx));
        }
        let hint = match (reply.status, &self.client_id) {
            (400, Some(c)) => format!("no managed identity with client_id '{c}' is assigned to this VM: check auth.client_id"),
            (400, None) => "no system-assigned managed identity is enabled on this VM (or several user-assigned ones are and auth.client_id must pick one)".to_owned(),
            (403, _) => "IMDS refuses requests that passed through a proxy: let 169.254.169.254 bypass it".to_owned(),
            _ => "check that this machine is an Azure VM with a managed identity".to_owned(),
        };
        // IMDS answers 404 and 410 while the identity is still being set up after boot: the SDKs retry those.
        Err(failure(&reply, "IMDS", &hint, &[], &[404, 410]))
    }
    fn name(&self) -> &'static str {
        "managed identity (IMDS)"
    }
}

/// Managed identity on an Azure Arc-enabled server, through the local Arc agent and its key-file challenge.
#[cfg(feature = "managed-identity")]
#[derive(Debug)]
pub struct ArcIdentity {
    endpoint: String,
    key_dir: PathBuf,
}

#[cfg(feature = "managed-identity")]
impl ArcIdentity {
    /// The Arc agent at `endpoint`; challenge files are accepted only inside `key_dir`.
    pub fn new(endpoint: &str, key_dir: PathBuf) -> Result<Self, Error> {
        http::check_url(endpoint, "auth.arc_endpoint")?;
        Ok(ArcIdentity {
            endpoint: endpoint.to_owned(),
            key_dir,
        })
    }

    /// The request URL: `{endpoint}?api-version=2020-06-01&resource={resource}`.
    pub fn url(&self, resource: &str) -> String {
        let mut url = self.endpoint.clone();
        query(&mut url, "api-version", ARC_API_VERSION);
        query(&mut url, "resource", resource);
        url
    }
}

#[cfg(feature = "managed-identity")]
impl TokenSource for ArcIdentity {
    fn fetch(&self, ctx: &FetchContext<'_>) -> Result<AccessToken, FetchError> {
        let url = self.url(&ctx.cloud.resource);
        let first = http::get(ctx.agent, &url, &[("Metadata", "true")])?;
        if first.status == 200 {
            return read_success(&first, "the Azure Arc agent", true, unix_secs(ctx));
        }
        if first.status != 401 {
            return Err(failure(
                &first,
                "the Azure Arc agent",
                "expected its 401 challenge: check that himds is running (azcmagent show)",
                &[],
                &[404, 410],
            ));
        }
        let realm = first
            .www_authenticate
            .as_deref()
            .and_then(arc::challenge_path)
            .ok_or_else(|| {
                Error::new(
                    ErrorKind::AuthRefused,
                    "the Azure Arc agent answered 401 without a 'WWW-Authenticate: Basic realm=<key file>' challenge",
                )
            })?;
        let key = arc::read_key(&realm, &self.key_dir)?;
        let mut auth = SecretString::new(String::with_capacity(6 + key.expose().len()));
        auth.push_str("Basic ");
        auth.push_str(key.expose());
        drop(key);
        let second = http::get(
            ctx.agent,
            &url,
            &[("Metadata", "true"), ("Authorization", auth.expose())],
        )?;
        if second.status == 200 {
            return read_success(&second, "the Azure Arc agent", true, unix_secs(ctx));
        }
        Err(failure(
            &second,
            "the Azure Arc agent",
            "the key file's contents were not accepted: check that the machine is connected (azcmagent show) and has an identity",
            &[auth.expose()],
            &[404, 410],
        ))
    }
    fn name(&self) -> &'static str {
        "managed identity (Azure Arc)"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The wall clock in these tests, seconds since the epoch (2026-01-01).
    const NOW: u64 = 1_767_225_600;

    #[test]
    fn token_response_with_number_fields() {
        let t = parse_token_response(
            br#"{"token_type":"Bearer","expires_in":3599,"ext_expires_in":3599,"refresh_in":1799,"access_token":"eyJ0eXAi.abc.def"}"#,
            false,
            NOW,
        )
        .unwrap();
        assert_eq!(t.token.expose(), "eyJ0eXAi.abc.def");
        assert_eq!(t.lifetime, Lifetime::For(Duration::from_secs(3599)));
        assert_eq!(t.refresh_in, Some(Duration::from_secs(1799)));
    }

    #[test]
    fn token_response_with_string_fields_like_imds() {
        let now = NOW;
        let body = format!(
            r#"{{"access_token":"tok","client_id":"c","expires_in":"86399","expires_on":"{}","ext_expires_in":"86399","not_before":"{}","resource":"https://kusto.kusto.windows.net","token_type":"Bearer"}}"#,
            now + 86399,
            now
        );
        let t = parse_token_response(body.as_bytes(), true, NOW).unwrap();
        assert_eq!(t.lifetime, Lifetime::For(Duration::from_secs(86399)));
        assert!(t.managed_identity);
        assert_eq!(t.refresh_in, None);
    }

    #[test]
    fn expires_on_alone_is_enough_and_is_measured_against_the_given_wall_time() {
        let body = format!(r#"{{"access_token":"tok","expires_on":{}}}"#, NOW + 100);
        let t = parse_token_response(body.as_bytes(), true, NOW).unwrap();
        assert_eq!(t.lifetime, Lifetime::For(Duration::from_secs(100)));
        let t = parse_token_response(body.as_bytes(), true, NOW + 40).unwrap();
        assert_eq!(t.lifetime, Lifetime::For(Duration::from_secs(60)));
        let e = parse_token_response(body.as_bytes(), true, NOW + 100).unwrap_err();
        assert!(e.message.contains("already expired"), "{}", e.message);
    }

    #[test]
    fn a_callback_expiry_is_measured_against_the_clock_wall_time() {
        let clock = crate::clock::ManualClock::at_unix_ms(NOW * 1000);
        let cloud = crate::auth::metadata::Cloud {
            authority_host: String::new(),
            resource: String::new(),
            authority_explicit: false,
        };
        let agent = ureq::Agent::new_with_defaults();
        let src = CallbackSource::new(Arc::new(|| Ok(("t".to_owned(), NOW + 600))));
        let fetch = |src: &CallbackSource| {
            src.fetch(&FetchContext {
                agent: &agent,
                cloud: &cloud,
                clock: &*clock,
            })
        };
        assert_eq!(
            fetch(&src).unwrap().lifetime,
            Lifetime::For(Duration::from_secs(600))
        );
        clock.advance(Duration::from_secs(450));
        assert_eq!(
            fetch(&src).unwrap().lifetime,
            Lifetime::For(Duration::from_secs(150))
        );
        clock.advance(Duration::from_secs(160));
        let e = fetch(&src).unwrap_err().error;
        assert_eq!(e.kind, ErrorKind::AuthRefused);
        assert!(e.message.contains("expired 10 s ago"), "{}", e.message);
    }

    #[test]
    fn garbage_token_responses_are_transient_errors_without_the_body() {
        for body in [
            &b""[..],
            b"<html>proxy login</html>",
            b"{}",
            br#"{"access_token":"tok"}"#,
            br#"{"access_token":"","expires_in":10}"#,
            br#"{"access_token":"has space","expires_in":10}"#,
            br#"{"access_token":"tok","expires_in":0}"#,
            br#"{"access_token":"tok","expires_in":"soon"}"#,
            br#"{"access_token":"tok","expires_in":10"#,
        ] {
            let e = parse_token_response(body, false, NOW).unwrap_err();
            assert_eq!(
                e.kind,
                ErrorKind::TransientFailure,
                "{:?}",
                String::from_utf8_lossy(body)
            );
            assert!(!e.message.contains("tok\""));
        }
        let e = parse_token_response(
            br#"{"access_token":"tok","token_type":"pop","expires_in":10}"#,
            false,
            NOW,
        )
        .unwrap_err();
        assert_eq!(e.kind, ErrorKind::AuthRefused);
    }

    #[test]
    fn refresh_in_beyond_the_lifetime_is_ignored() {
        let t = parse_token_response(
            br#"{"access_token":"t","expires_in":100,"refresh_in":500}"#,
            false,
            NOW,
        )
        .unwrap();
        assert_eq!(t.refresh_in, None);
    }

    #[cfg(any(feature = "entra", feature = "managed-identity"))]
    fn reply(status: u16, body: &str) -> Reply {
        Reply {
            status,
            www_authenticate: None,
            retry_after: Some("7".into()),
            body: http::SecretBytes(body.as_bytes().to_vec()),
            truncated: false,
        }
    }

    #[test]
    #[cfg(any(feature = "entra", feature = "managed-identity"))]
    fn refusals_are_auth_refused_and_outages_transient() {
        let body = r#"{"error":"invalid_client","error_description":"AADSTS7000215: Invalid client secret provided: s3cr3t-value.\r\nTrace ID: 1"}"#;
        let f = failure(
            &reply(401, body),
            "Entra ID",
            "check it",
            &["s3cr3t-value"],
            &[],
        );
        assert_eq!(f.error.kind, ErrorKind::AuthRefused);
        assert!(f.error.message.contains("invalid_client"));
        assert!(f.error.message.contains("AADSTS7000215"));
        assert!(!f.error.message.contains("s3cr3t-value"));
        assert!(!f.error.message.contains('\r'));
        let f = failure(
            &reply(400, r#"{"error":"unauthorized_client"}"#),
            "Entra ID",
            "h",
            &[],
            &[],
        );
        assert_eq!(f.error.kind, ErrorKind::AuthRefused);
        for s in [408, 429, 500, 503] {
            let f = failure(&reply(s, "busy"), "Entra ID", "h", &[], &[]);
            assert_eq!(f.error.kind, ErrorKind::TransientFailure, "{s}");
            assert_eq!(f.retry_after, Some(Duration::from_secs(7)));
        }
        assert_eq!(
            failure(&reply(404, ""), "IMDS", "h", &[], &[404])
                .error
                .kind,
            ErrorKind::TransientFailure
        );
        assert_eq!(
            failure(&reply(302, ""), "Entra ID", "h", &[], &[])
                .error
                .kind,
            ErrorKind::AuthRefused
        );
    }

    #[test]
    #[cfg(feature = "entra")]
    fn client_secret_form_is_exactly_the_documented_one() {
        let cc = ClientCredentials::new(
            "contoso.onmicrosoft.com",
            "00000000-0000-0000-0000-000000000001",
            Assertion::Secret(SecretString::new("a+b&c=d")),
            None,
        );
        let url = cc.token_url("https://login.microsoftonline.com/");
        assert_eq!(
            url,
            "https://login.microsoftonline.com/contoso.onmicrosoft.com/oauth2/v2.0/token"
        );
        let form = cc
            .form(&url, "https://kusto.kusto.windows.net/.default", NOW)
            .unwrap();
        assert_eq!(
            form.expose(),
            "grant_type=client_credentials&client_id=00000000-0000-0000-0000-000000000001&client_secret=a%2Bb%26c%3Dd&scope=https%3A%2F%2Fkusto.kusto.windows.net%2F.default"
        );
        assert!(!format!("{cc:?}").contains("a+b"));
    }

    #[test]
    #[cfg(feature = "managed-identity")]
    fn managed_identity_urls() {
        let mi = ManagedIdentity::new(
            IMDS_DEFAULT_ENDPOINT,
            Some("11111111-2222-3333-4444-555555555555"),
        )
        .unwrap();
        assert_eq!(
            mi.url("https://kusto.kusto.windows.net"),
            "http://169.254.169.254/metadata/identity/oauth2/token?api-version=2018-02-01&resource=https%3A%2F%2Fkusto.kusto.windows.net&client_id=11111111-2222-3333-4444-555555555555"
        );
        let arc = ArcIdentity::new(arc::ARC_DEFAULT_ENDPOINT, arc::ARC_KEY_DIR.into()).unwrap();
        assert_eq!(
            arc.url("https://kusto.kusto.windows.net"),
            "http://localhost:40342/metadata/identity/oauth2/token?api-version=2020-06-01&resource=https%3A%2F%2Fkusto.kusto.windows.net"
        );
        assert_eq!(
            ManagedIdentity::new("http://10.0.0.1/token", None)
                .unwrap_err()
                .kind,
            ErrorKind::InsecureTransport
        );
    }

    #[test]
    #[cfg(feature = "entra")]
    fn federated_token_is_reread_every_time() {
        let dir = std::env::temp_dir().join(format!("kedge-wi-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join("token");
        let cc = ClientCredentials::new("t", "c", Assertion::FederatedTokenFile(p.clone()), None);
        std::fs::write(&p, "first.jwt.x\n").unwrap();
        let f1 = cc.form("https://l/t/oauth2/v2.0/token", "s", NOW).unwrap();
        std::fs::write(&p, "second.jwt.y").unwrap();
        let f2 = cc.form("https://l/t/oauth2/v2.0/token", "s", NOW).unwrap();
        assert!(f1.expose().contains("client_assertion=first.jwt.x&"));
        assert!(f2.expose().contains("client_assertion=second.jwt.y&"));
        assert!(f2.expose().contains("client_assertion_type=urn%3Aietf%3Aparams%3Aoauth%3Aclient-assertion-type%3Ajwt-bearer&"));
        std::fs::write(&p, "").unwrap();
        assert_eq!(
            cc.form("u", "s", NOW).unwrap_err().kind,
            ErrorKind::AuthRefused
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }
}

/// The sources against a scripted loopback server: what goes on the wire, byte for byte where the protocol says.
#[cfg(all(test, feature = "entra", feature = "managed-identity"))]
mod wire_tests {
    use super::*;
    use crate::auth::metadata::Cloud;
    use crate::transport::test_server::serve;

    /// The wall clock the sources see, seconds since the epoch (2026-01-01: assertions need a set clock).
    const NOW: u64 = 1_767_225_600;

    fn ctx_run<T>(
        src: &dyn TokenSource,
        authority: &str,
        f: impl FnOnce(Result<AccessToken, FetchError>) -> T,
    ) -> T {
        let agent = ureq::Agent::new_with_defaults();
        let cloud = Cloud {
            authority_host: authority.to_owned(),
            resource: "https://kusto.kusto.windows.net".to_owned(),
            authority_explicit: true,
        };
        let clock = crate::clock::ManualClock::at_unix_ms(NOW * 1000);
        f(src.fetch(&FetchContext {
            agent: &agent,
            cloud: &cloud,
            clock: &*clock,
        }))
    }

    const OK: &str = r#"{"token_type":"Bearer","expires_in":3599,"ext_expires_in":3599,"access_token":"tok.en.1"}"#;

    #[test]
    fn client_secret_posts_the_documented_form() {
        let (base, h) = serve(vec![(200, vec![], OK.into())]);
        let cc = ClientCredentials::new(
            "tenant-1",
            "client-1",
            Assertion::Secret(SecretString::new("s=cr&t")),
            None,
        );
        let t = ctx_run(&cc, &base, |r| r.unwrap());
        assert_eq!(t.token.expose(), "tok.en.1");
        let req = &h.join().unwrap()[0];
        assert!(
            req.starts_with("POST /tenant-1/oauth2/v2.0/token HTTP/1.1\r\n"),
            "{req}"
        );
        assert!(
            req.to_ascii_lowercase()
                .contains("content-type: application/x-www-form-urlencoded\r\n"),
            "{req}"
        );
        assert!(req.ends_with("\r\n\r\ngrant_type=client_credentials&client_id=client-1&client_secret=s%3Dcr%26t&scope=https%3A%2F%2Fkusto.kusto.windows.net%2F.default"), "{req}");
    }

    #[test]
    fn a_refused_secret_is_auth_refused_without_the_secret() {
        let body = r#"{"error":"invalid_client","error_description":"AADSTS7000215: Invalid client secret provided."}"#;
        let (base, h) = serve(vec![(401, vec![], body.into())]);
        let cc = ClientCredentials::new(
            "t",
            "c",
            Assertion::Secret(SecretString::new("s3cr3t-x")),
            None,
        );
        let e = ctx_run(&cc, &base, |r| r.unwrap_err());
        h.join().unwrap();
        assert_eq!(e.error.kind, ErrorKind::AuthRefused);
        assert!(
            e.error.message.contains("invalid_client")
                && e.error.message.contains("auth.client_secret"),
            "{}",
            e.error.message
        );
        assert!(!e.error.message.contains("s3cr3t"));
    }

    #[test]
    fn throttling_is_transient_with_retry_after() {
        let (base, h) = serve(vec![(
            429,
            vec![("Retry-After", "3".into())],
            String::new(),
        )]);
        let cc = ClientCredentials::new("t", "c", Assertion::Secret(SecretString::new("s")), None);
        let e = ctx_run(&cc, &base, |r| r.unwrap_err());
        h.join().unwrap();
        assert_eq!(e.error.kind, ErrorKind::TransientFailure);
        assert_eq!(e.retry_after, Some(Duration::from_secs(3)));
    }

    #[test]
    fn certificate_posts_a_jwt_assertion() {
        let cert = include_str!("../../../devserver/fixtures/client-cert.pem");
        let key = include_str!("../../../devserver/fixtures/client-key-pkcs8.pem");
        let c = CertificateCredential::from_pem(cert.as_bytes(), "c", key.as_bytes(), "k", false)
            .unwrap();
        let (base, h) = serve(vec![(200, vec![], OK.into())]);
        let cc = ClientCredentials::new("t", "c", Assertion::Certificate(c), None);
        ctx_run(&cc, &base, |r| r.unwrap());
        let req = &h.join().unwrap()[0];
        let body = req.split("\r\n\r\n").nth(1).unwrap();
        let fields: Vec<&str> = body.split('&').collect();
        assert_eq!(fields[0], "grant_type=client_credentials");
        assert_eq!(fields[1], "client_id=c");
        assert_eq!(fields[2], "client_assertion_type=urn%3Aietf%3Aparams%3Aoauth%3Aclient-assertion-type%3Ajwt-bearer");
        assert!(fields[3].starts_with("client_assertion=eyJ"));
        assert_eq!(fields[3].matches('.').count(), 2);
        assert!(fields[4].starts_with("scope="));
    }

    #[test]
    fn imds_gets_with_the_metadata_header() {
        let now = NOW;
        let body = format!(
            r#"{{"access_token":"mi.tok","expires_in":"86399","expires_on":"{}","token_type":"Bearer","resource":"https://kusto.kusto.windows.net"}}"#,
            now + 86399
        );
        let (base, h) = serve(vec![(200, vec![], body)]);
        let mi =
            ManagedIdentity::new(&format!("{base}/metadata/identity/oauth2/token"), None).unwrap();
        let t = ctx_run(&mi, "unused", |r| r.unwrap());
        assert!(t.managed_identity);
        let req = &h.join().unwrap()[0];
        assert!(req.starts_with("GET /metadata/identity/oauth2/token?api-version=2018-02-01&resource=https%3A%2F%2Fkusto.kusto.windows.net HTTP/1.1\r\n"), "{req}");
        assert!(
            req.to_ascii_lowercase().contains("\r\nmetadata: true\r\n"),
            "{req}"
        );
    }

    #[test]
    fn arc_answers_the_challenge_from_the_key_file() {
        let dir = std::env::temp_dir().join(format!("kedge-arc-wire-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let key = dir.join("challenge.key");
        std::fs::write(&key, "c0ffee").unwrap();
        let (base, h) = serve(vec![
            (
                401,
                vec![("WWW-Authenticate", format!("Basic realm={}", key.display()))],
                String::new(),
            ),
            (200, vec![], OK.into()),
        ]);
        let arc = ArcIdentity::new(
            &format!("{base}/metadata/identity/oauth2/token"),
            dir.clone(),
        )
        .unwrap();
        assert_eq!(
            ctx_run(&arc, "unused", |r| r.unwrap()).token.expose(),
            "tok.en.1"
        );
        let reqs = h.join().unwrap();
        assert!(
            reqs[0].contains(
                "?api-version=2020-06-01&resource=https%3A%2F%2Fkusto.kusto.windows.net "
            ),
            "{}",
            reqs[0]
        );
        assert!(!reqs[0].to_ascii_lowercase().contains("authorization"));
        assert!(
            reqs[1]
                .to_ascii_lowercase()
                .contains("\r\nauthorization: basic c0ffee\r\n"),
            "{}",
            reqs[1]
        );

        // A challenge naming a file outside the key directory is not read.
        let (base, h) = serve(vec![(
            401,
            vec![("WWW-Authenticate", "Basic realm=/etc/passwd.key".into())],
            String::new(),
        )]);
        let arc = ArcIdentity::new(&format!("{base}/t"), dir.clone()).unwrap();
        let e = ctx_run(&arc, "unused", |r| r.unwrap_err());
        assert_eq!(h.join().unwrap().len(), 1);
        assert_eq!(e.error.kind, ErrorKind::AuthRefused);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
