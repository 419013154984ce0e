//! The `auth.*` and `connection_string` config keys, and turning them into a [`TokenCache`].
//!
//! Values are checked when set (files read and parsed, so a typo fails at `set` with the key's name), and
//! completeness when built. Secret values never reach `Debug` or a message.

use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::clock::SharedClock;
use crate::error::{Error, ErrorKind};

#[cfg(feature = "managed-identity")]
use super::arc::{self, ARC_KEY_DIR};
use super::cache::{RetryPolicy, TokenCache};
use super::connstr::{parse_connection_string, ConnectionString, CredentialSpec};
use super::http;
#[cfg(feature = "entra")]
use super::jwt::CertificateCredential;
use super::metadata::{normalize_resource, CloudConfig};
#[cfg(feature = "managed-identity")]
use super::providers::{ArcIdentity, ManagedIdentity, IMDS_DEFAULT_ENDPOINT};
#[cfg(feature = "entra")]
use super::providers::{Assertion, ClientCredentials};
use super::providers::{CallbackSource, StaticToken, TokenCallback, TokenSource};
use crate::secret::SecretString;

/// `auth.method`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Method {
    /// `token`: `auth.token`.
    Token,
    /// `callback`: the caller's token function.
    Callback,
    /// `client_secret`: Entra ID client credentials with a secret.
    ClientSecret,
    /// `certificate`: Entra ID client credentials with a certificate.
    Certificate,
    /// `managed_identity`: IMDS on Azure VMs (Azure Arc when detected).
    ManagedIdentity,
    /// `arc`: the Azure Arc agent.
    Arc,
    /// `workload_identity`: a federated token file (Kubernetes).
    WorkloadIdentity,
}

impl Method {
    fn parse(v: &str) -> Option<Method> {
        Some(match v {
            "token" => Method::Token,
            "callback" => Method::Callback,
            "client_secret" => Method::ClientSecret,
            "certificate" => Method::Certificate,
            "managed_identity" => Method::ManagedIdentity,
            "arc" => Method::Arc,
            "workload_identity" => Method::WorkloadIdentity,
            _ => return None,
        })
    }

    /// Its `auth.method` value.
    fn name(self) -> &'static str {
        match self {
            Method::Token => "token",
            Method::Callback => "callback",
            Method::ClientSecret => "client_secret",
            Method::Certificate => "certificate",
            Method::ManagedIdentity => "managed_identity",
            Method::Arc => "arc",
            Method::WorkloadIdentity => "workload_identity",
        }
    }

    /// The method when this build has it, else [`Method::compiled_out`]: Entra ID needs the cargo feature
    /// `entra`, IMDS and Arc `managed-identity`.
    fn compiled_in(self) -> Result<Method, Error> {
        let there = match self {
            Method::Token | Method::Callback => true,
            Method::ClientSecret | Method::Certificate | Method::WorkloadIdentity => {
                cfg!(feature = "entra")
            }
            Method::ManagedIdentity | Method::Arc => cfg!(feature = "managed-identity"),
        };
        if there {
            Ok(self)
        } else {
            Err(self.compiled_out())
        }
    }

    /// The error for a method this build was compiled without: never a silent fallback to another one.
    fn compiled_out(self) -> Error {
        let feature = match self {
            Method::ManagedIdentity | Method::Arc => "managed-identity",
            _ => "entra",
        };
        invalid(
            "auth.method",
            format_args!(
                "{} is not in this build of kusto-edge: it needs the cargo feature `{feature}` (on by default, left out with --no-default-features)",
                self.name()
            ),
        )
    }
}

/// Every key [`AuthConfig::set`] understands, for the README and the config's key table.
pub const AUTH_KEYS: &[(&str, &str, &str)] = &[
    (
        "auth.method",
        "(from the other keys)",
        "token, callback, client_secret, certificate, managed_identity, arc or workload_identity",
    ),
    ("auth.token", "(none)", "static bearer token (secret)"),
    ("auth.tenant", "(none)", "Entra ID tenant: GUID or domain"),
    (
        "auth.client_id",
        "(none)",
        "application (client) id; for managed_identity: a user-assigned identity",
    ),
    ("auth.client_secret", "(none)", "client secret (secret)"),
    (
        "auth.client_secret_file",
        "(none)",
        "file holding the client secret",
    ),
    (
        "auth.cert_file",
        "(none)",
        "PEM certificate (may also hold the key)",
    ),
    (
        "auth.key_file",
        "(auth.cert_file)",
        "PEM RSA private key, PKCS#8 or PKCS#1, unencrypted",
    ),
    (
        "auth.send_x5c",
        "false",
        "send the certificate in the assertion (subject-name/issuer authentication)",
    ),
    (
        "auth.authority_host",
        "https://login.microsoftonline.com",
        "Entra ID authority (sovereign clouds differ)",
    ),
    (
        "auth.resource",
        "https://kusto.kusto.windows.net",
        "token audience; /.default is added for Entra ID",
    ),
    (
        "auth.imds_endpoint",
        "http://169.254.169.254/metadata/identity/oauth2/token",
        "IMDS token endpoint",
    ),
    (
        "auth.arc_endpoint",
        "$IDENTITY_ENDPOINT or http://localhost:40342/metadata/identity/oauth2/token",
        "Azure Arc token endpoint",
    ),
    (
        "auth.arc_key_dir",
        "/var/opt/azcmagent/tokens/",
        "the only directory Arc challenge files are read from",
    ),
    (
        "auth.federated_token_file",
        "$AZURE_FEDERATED_TOKEN_FILE",
        "workload identity token file, re-read on every fetch",
    ),
    (
        "auth.metadata",
        "true",
        "ask the cluster for its login endpoint and resource (GET /v1/rest/auth/metadata)",
    ),
    (
        "connection_string",
        "(none)",
        "Kusto connection string: cluster, database and credential",
    ),
];

/// Authentication settings. Built with [`AuthConfig::set`], turned into a cache with
/// [`AuthConfig::build`].
#[derive(Clone, Default)]
pub struct AuthConfig {
    method: Option<Method>,
    token: Option<SecretString>,
    tenant: Option<String>,
    client_id: Option<String>,
    client_secret: Option<SecretString>,
    cert_file: Option<PathBuf>,
    key_file: Option<PathBuf>,
    send_x5c: bool,
    authority_host: Option<String>,
    resource: Option<String>,
    imds_endpoint: Option<String>,
    arc_endpoint: Option<String>,
    arc_key_dir: Option<PathBuf>,
    federated_token_file: Option<PathBuf>,
    metadata: Option<bool>,
    connection_string: Option<ConnectionString>,
    callback: Option<TokenCallback>,
}

impl fmt::Debug for AuthConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AuthConfig")
            .field("method", &self.method)
            .field("token", &self.token.as_ref().map(|_| "***"))
            .field("tenant", &self.tenant)
            .field("client_id", &self.client_id)
            .field("client_secret", &self.client_secret.as_ref().map(|_| "***"))
            .field("cert_file", &self.cert_file)
            .field("key_file", &self.key_file)
            .field("authority_host", &self.authority_host)
            .field("resource", &self.resource)
            .field("imds_endpoint", &self.imds_endpoint)
            .field("arc_endpoint", &self.arc_endpoint)
            .field("federated_token_file", &self.federated_token_file)
            .field("connection_string", &self.connection_string)
            .field("callback", &self.callback.as_ref().map(|_| "fn"))
            .finish_non_exhaustive()
    }
}

fn invalid(key: &str, why: impl fmt::Display) -> Error {
    Error::new(
        ErrorKind::ConfigInvalidValue,
        format!("config key '{key}': {why}"),
    )
}

fn incomplete(msg: impl Into<String>) -> Error {
    Error::new(ErrorKind::ConfigIncomplete, msg)
}

fn parse_bool(key: &str, v: &str) -> Result<bool, Error> {
    crate::config::parse_bool_word(v).ok_or_else(|| {
        invalid(
            key,
            format_args!("'{v}' is not true or false (yes/no, 1/0)"),
        )
    })
}

/// Tenant and client ids go into a URL path and a form: GUIDs or domain names only.
fn id(key: &str, v: &str) -> Result<String, Error> {
    let v = v.trim();
    if !super::connstr::is_id_text(v) {
        return Err(invalid(
            key,
            format_args!("'{v}' is not a GUID or domain name"),
        ));
    }
    Ok(v.to_owned())
}

fn url(key: &str, v: &str) -> Result<String, Error> {
    let v = v.trim().trim_end_matches('/');
    http::check_url(v, key)?;
    Ok(v.to_owned())
}

fn read_file(key: &str, path: &str, max: u64) -> Result<Vec<u8>, Error> {
    use std::io::Read;
    let f = std::fs::File::open(path)
        .map_err(|e| invalid(key, format_args!("'{path}' cannot be read: {e}")))?;
    let mut buf = Vec::new();
    f.take(max + 1)
        .read_to_end(&mut buf)
        .map_err(|e| invalid(key, format_args!("'{path}' cannot be read: {e}")))?;
    if buf.len() as u64 > max {
        return Err(invalid(
            key,
            format_args!("'{path}' is larger than {max} bytes"),
        ));
    }
    Ok(buf)
}

/// Largest PEM or secret file read.
const MAX_FILE_BYTES: u64 = 64 * 1024;

impl AuthConfig {
    /// Sets one key. Returns `Ok(false)` for a key that is not ours (the caller tries its own), `Ok(true)` when
    /// taken, and an error naming the key (never its secret value) when the value is bad.
    pub fn set(&mut self, key: &str, value: &str) -> Result<bool, Error> {
        match key {
            "auth.method" => {
                self.method = Some(Method::parse(value.trim()).ok_or_else(|| {
                    invalid(key, format_args!("'{value}' is not one of token, callback, client_secret, certificate, managed_identity, arc, workload_identity"))
                })?.compiled_in()?)
            }
            "auth.token" => {
                if !super::providers::is_token_text(value) {
                    return Err(invalid(
                        key,
                        "a token is printable ASCII without spaces, at most 32 KiB",
                    ));
                }
                self.token = Some(SecretString::new(value));
            }
            "auth.tenant" => self.tenant = Some(id(key, value)?),
            "auth.client_id" => self.client_id = Some(id(key, value)?),
            "auth.client_secret" => {
                if value.is_empty() {
                    return Err(invalid(key, "empty"));
                }
                self.client_secret = Some(SecretString::new(value));
            }
            "auth.client_secret_file" => {
                let bytes = read_file(key, value, MAX_FILE_BYTES)?;
                let text = SecretString::new(String::from_utf8(bytes).map_err(|_| invalid(key, "the file is not UTF-8 text"))?);
                let secret = text.expose().trim_end_matches(['\r', '\n']);
                if secret.is_empty() {
                    return Err(invalid(key, format_args!("'{value}' is empty")));
                }
                self.client_secret = Some(SecretString::new(secret));
            }
            "auth.cert_file" => {
                let pem = read_file(key, value, MAX_FILE_BYTES)?;
                use rustls_pki_types::pem::PemObject;
                rustls_pki_types::CertificateDer::from_pem_slice(&pem)
                    .map_err(|_| invalid(key, format_args!("'{value}' holds no PEM CERTIFICATE")))?;
                self.cert_file = Some(value.into());
            }
            "auth.key_file" => {
                // Read now so that a wrong path fails here; the key is parsed with the certificate at build.
                let pem = super::http::SecretBytes(read_file(key, value, MAX_FILE_BYTES)?);
                if !String::from_utf8_lossy(&pem.0).contains("PRIVATE KEY-----") {
                    return Err(invalid(key, format_args!("'{value}' holds no PEM private key")));
                }
                self.key_file = Some(value.into());
            }
            "auth.send_x5c" => self.send_x5c = parse_bool(key, value)?,
            "auth.authority_host" => {
                let v = url(key, value)?;
                if http::check_url(&v, key)? == http::Target::PlainImds {
                    return Err(Error::new(ErrorKind::InsecureTransport, "auth.authority_host must be https"));
                }
                self.authority_host = Some(v);
            }
            "auth.resource" => {
                let v = normalize_resource(value);
                if http::split_url(&v).is_none() {
                    return Err(invalid(key, format_args!("'{value}' is not a URL like https://kusto.kusto.windows.net")));
                }
                self.resource = Some(v);
            }
            "auth.imds_endpoint" => self.imds_endpoint = Some(url(key, value)?),
            "auth.arc_endpoint" => self.arc_endpoint = Some(url(key, value)?),
            "auth.arc_key_dir" => {
                let p = Path::new(value);
                if !p.is_absolute() {
                    return Err(invalid(key, "give an absolute directory path"));
                }
                self.arc_key_dir = Some(p.into());
            }
            "auth.federated_token_file" => {
                if value.is_empty() {
                    return Err(invalid(key, "give a file path"));
                }
                self.federated_token_file = Some(value.into());
            }
            "auth.metadata" => self.metadata = Some(parse_bool(key, value)?),
            "connection_string" => self.connection_string = Some(parse_connection_string(value)?),
            _ => return Ok(false),
        }
        Ok(true)
    }

    /// Sets the caller's token function (the FFI wraps a C callback); implies `auth.method=callback` unless
    /// another method is set.
    pub fn set_callback(&mut self, callback: TokenCallback) {
        self.callback = Some(callback);
    }

    /// The parsed `connection_string`, for the cluster URL, database and tracing names it carries.
    pub fn connection_string(&self) -> Option<&ConnectionString> {
        self.connection_string.as_ref()
    }

    fn cloud_config(&self, cluster: Option<&str>) -> CloudConfig {
        CloudConfig {
            authority_host: self.authority_host.clone(),
            resource: self.resource.clone(),
            fetch_metadata: self.metadata.unwrap_or(true),
            cluster: cluster.map(|c| c.trim_end_matches('/').to_owned()),
        }
    }

    /// The method in effect: `auth.method`, else what the other keys imply.
    pub fn method(&self) -> Option<Method> {
        if self.method.is_some() {
            return self.method;
        }
        if self.callback.is_some() {
            return Some(Method::Callback);
        }
        if self.token.is_some() {
            return Some(Method::Token);
        }
        match self.connection_string.as_ref().map(|c| &c.credential) {
            Some(CredentialSpec::Token(_)) => Some(Method::Token),
            Some(CredentialSpec::ClientSecret { .. }) => Some(Method::ClientSecret),
            Some(CredentialSpec::Certificate { .. }) => Some(Method::Certificate),
            _ if self.client_secret.is_some() => Some(Method::ClientSecret),
            _ if self.cert_file.is_some() => Some(Method::Certificate),
            _ => None,
        }
    }

    /// Checks the settings are complete and builds the token cache; `Ok(None)` when no authentication is
    /// configured (requests go without `Authorization`, e.g. to a local test endpoint). `cluster` is the cluster
    /// URL for cloud metadata (the connection string's when `None`); `retry_max_total` bounds one fetch with its
    /// retries; `clock` is the cache's time (the client's, so that tests can move it).
    pub fn build(
        &self,
        cluster: Option<&str>,
        retry_max_total: Duration,
        clock: SharedClock,
    ) -> Result<Option<TokenCache>, Error> {
        let Some(method) = self.method() else {
            return Ok(None);
        };
        let cs = self.connection_string.as_ref();
        let cluster = cluster.or(cs.map(|c| c.cluster.as_str()));
        let cs_cred = cs.map(|c| &c.credential);
        let (cs_tenant, cs_client) = match cs_cred {
            Some(CredentialSpec::ClientSecret {
                tenant, client_id, ..
            })
            | Some(CredentialSpec::Certificate {
                tenant, client_id, ..
            }) => (tenant.clone(), Some(client_id.clone())),
            _ => (None, None),
        };
        #[cfg_attr(not(feature = "entra"), allow(unused_variables))]
        let tenant = self.tenant.clone().or(cs_tenant);
        #[cfg_attr(
            not(any(feature = "entra", feature = "managed-identity")),
            allow(unused_variables)
        )]
        let client_id = self.client_id.clone().or(cs_client);
        #[cfg(feature = "entra")]
        let env = |k: &str| std::env::var(k).ok().filter(|v| !v.trim().is_empty());

        let source: Box<dyn TokenSource> = match method {
            Method::Token => {
                let token = self
                    .token
                    .clone()
                    .or_else(|| match cs_cred {
                        Some(CredentialSpec::Token(t)) => Some(t.clone()),
                        _ => None,
                    })
                    .ok_or_else(|| incomplete("auth.method=token needs auth.token"))?;
                Box::new(StaticToken::new(token)?)
            }
            Method::Callback => {
                let cb = self.callback.clone().ok_or_else(|| {
                    incomplete("auth.method=callback needs a token callback (kedge_config_set_token_callback)")
                })?;
                Box::new(CallbackSource::new(cb))
            }
            #[cfg(feature = "entra")]
            Method::ClientSecret => {
                let secret = self.client_secret.clone().or_else(|| match cs_cred {
                    Some(CredentialSpec::ClientSecret { secret, .. }) => Some(secret.clone()),
                    _ => None,
                });
                let (Some(t), Some(c), Some(s)) = (&tenant, &client_id, secret) else {
                    return Err(incomplete(
                        "auth.method=client_secret needs auth.tenant, auth.client_id and auth.client_secret (or auth.client_secret_file)",
                    ));
                };
                Box::new(ClientCredentials::new(t, c, Assertion::Secret(s), None))
            }
            #[cfg(feature = "entra")]
            Method::Certificate => {
                let (Some(t), Some(c)) = (&tenant, &client_id) else {
                    return Err(incomplete(
                        "auth.method=certificate needs auth.tenant, auth.client_id and auth.cert_file (with auth.key_file unless the key is in the same file)",
                    ));
                };
                let cred = self.load_certificate(cs_cred)?;
                Box::new(ClientCredentials::new(
                    t,
                    c,
                    Assertion::Certificate(cred),
                    None,
                ))
            }
            #[cfg(feature = "entra")]
            Method::WorkloadIdentity => {
                let tenant = tenant.or_else(|| env("AZURE_TENANT_ID"));
                let client_id = client_id.or_else(|| env("AZURE_CLIENT_ID"));
                let file = self
                    .federated_token_file
                    .clone()
                    .or_else(|| env("AZURE_FEDERATED_TOKEN_FILE").map(PathBuf::from));
                let (Some(t), Some(c), Some(f)) = (tenant, client_id, file) else {
                    return Err(incomplete(
                        "auth.method=workload_identity needs auth.tenant, auth.client_id and auth.federated_token_file (or AZURE_TENANT_ID, AZURE_CLIENT_ID and AZURE_FEDERATED_TOKEN_FILE from the workload identity webhook)",
                    ));
                };
                let t = id("AZURE_TENANT_ID", &t)?;
                let c = id("AZURE_CLIENT_ID", &c)?;
                let authority = match env("AZURE_AUTHORITY_HOST") {
                    Some(a) => Some(url("AZURE_AUTHORITY_HOST", &a)?),
                    None => None,
                };
                Box::new(ClientCredentials::new(
                    &t,
                    &c,
                    Assertion::FederatedTokenFile(f),
                    authority,
                ))
            }
            #[cfg(feature = "managed-identity")]
            Method::ManagedIdentity if self.imds_endpoint.is_none() && arc::arc_detected() => {
                // As azure-identity does: on an Arc-enabled server, "managed identity" is the Arc agent.
                self.arc_source(client_id.as_deref())?
            }
            #[cfg(feature = "managed-identity")]
            Method::ManagedIdentity => {
                let endpoint = self
                    .imds_endpoint
                    .as_deref()
                    .unwrap_or(IMDS_DEFAULT_ENDPOINT);
                Box::new(ManagedIdentity::new(endpoint, client_id.as_deref())?)
            }
            #[cfg(feature = "managed-identity")]
            Method::Arc => self.arc_source(client_id.as_deref())?,
            // Implied by the other keys or the connection string, so not refused at `set`.
            #[cfg(not(all(feature = "entra", feature = "managed-identity")))]
            other => return Err(other.compiled_out()),
        };
        let retry = RetryPolicy {
            max_total: retry_max_total,
            ..RetryPolicy::default()
        };
        Ok(Some(TokenCache::new(
            source,
            self.cloud_config(cluster),
            retry,
            clock,
        )))
    }

    #[cfg(feature = "managed-identity")]
    fn arc_source(&self, client_id: Option<&str>) -> Result<Box<dyn TokenSource>, Error> {
        if client_id.is_some() {
            return Err(invalid(
                "auth.client_id",
                "Azure Arc-enabled servers have only their system-assigned identity: remove auth.client_id",
            ));
        }
        let endpoint = match &self.arc_endpoint {
            Some(e) => e.clone(),
            None => url("IDENTITY_ENDPOINT", &arc::arc_endpoint_from_env())?,
        };
        let dir = self
            .arc_key_dir
            .clone()
            .unwrap_or_else(|| ARC_KEY_DIR.into());
        Ok(Box::new(ArcIdentity::new(&endpoint, dir)?))
    }

    #[cfg(feature = "entra")]
    fn load_certificate(
        &self,
        cs_cred: Option<&CredentialSpec>,
    ) -> Result<CertificateCredential, Error> {
        let (cs_pem, thumbprint, cs_x5c) = match cs_cred {
            Some(CredentialSpec::Certificate {
                pem,
                thumbprint,
                send_x5c,
                ..
            }) => (pem.clone(), thumbprint.clone(), *send_x5c),
            _ => (None, None, false),
        };
        let send_x5c = self.send_x5c || cs_x5c;
        let cred = match (&self.cert_file, cs_pem) {
            (Some(cert), _) => {
                let cert_s = cert.display().to_string();
                let cert_pem = read_file("auth.cert_file", &cert_s, MAX_FILE_BYTES)?;
                let key_path = self.key_file.as_ref().unwrap_or(cert);
                let key_s = key_path.display().to_string();
                let key_pem = super::http::SecretBytes(read_file("auth.key_file", &key_s, MAX_FILE_BYTES)?);
                let key_what = if self.key_file.is_some() {
                    format!("auth.key_file '{key_s}'")
                } else {
                    format!("auth.cert_file '{cert_s}' (no auth.key_file given)")
                };
                CertificateCredential::from_pem(&cert_pem, &format!("auth.cert_file '{cert_s}'"), &key_pem.0, &key_what, send_x5c)?
            }
            (None, Some(pem)) => CertificateCredential::from_pem(
                pem.expose().as_bytes(),
                "connection string 'Application Certificate'",
                pem.expose().as_bytes(),
                "connection string 'Application Certificate'",
                send_x5c,
            )?,
            (None, None) => {
                return Err(incomplete(
                    "auth.method=certificate needs auth.cert_file (and auth.key_file unless the key is in the same file)",
                ))
            }
        };
        if let Some(t) = thumbprint {
            if t != cred.thumbprint_hex() {
                return Err(invalid(
                    "connection_string",
                    format_args!(
                        "'Application Certificate Thumbprint' is {t} but the certificate's is {}",
                        cred.thumbprint_hex()
                    ),
                ));
            }
        }
        Ok(cred)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    /// The test endpoint's fixtures, beside this crate in the workspace.
    #[cfg(feature = "entra")]
    fn fixtures() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../devserver/fixtures")
    }

    fn set(c: &mut AuthConfig, k: &str, v: &str) {
        assert!(
            c.set(k, v).unwrap_or_else(|e| panic!("{k}: {}", e.message)),
            "{k}"
        );
    }

    #[test]
    fn unknown_keys_are_left_to_the_caller() {
        assert!(!AuthConfig::default().set("batch.bytes", "1").unwrap());
    }

    #[test]
    fn nothing_configured_builds_no_cache() {
        assert!(AuthConfig::default()
            .build(None, Duration::from_secs(1), crate::clock::system())
            .unwrap()
            .is_none());
    }

    #[test]
    #[cfg(feature = "entra")]
    fn incomplete_methods_say_what_is_missing() {
        let mut c = AuthConfig::default();
        set(&mut c, "auth.method", "client_secret");
        set(&mut c, "auth.tenant", "contoso.com");
        let e = c
            .build(None, Duration::from_secs(1), crate::clock::system())
            .unwrap_err();
        assert_eq!(e.kind, ErrorKind::ConfigIncomplete);
        assert_eq!(e.message, "auth.method=client_secret needs auth.tenant, auth.client_id and auth.client_secret (or auth.client_secret_file)");
        for (m, needle) in [
            ("token", "auth.token"),
            ("callback", "callback"),
            ("certificate", "auth.cert_file"),
            ("workload_identity", "auth.federated_token_file"),
        ] {
            let mut c = AuthConfig::default();
            set(&mut c, "auth.method", m);
            if m == "certificate" {
                set(&mut c, "auth.tenant", "t");
                set(&mut c, "auth.client_id", "c");
            }
            let e = c
                .build(None, Duration::from_secs(1), crate::clock::system())
                .unwrap_err();
            assert_eq!(e.kind, ErrorKind::ConfigIncomplete, "{m}");
            assert!(e.message.contains(needle), "{m}: {}", e.message);
        }
        assert_eq!(
            AuthConfig::default()
                .set("auth.method", "kerberos")
                .unwrap_err()
                .kind,
            ErrorKind::ConfigInvalidValue
        );
    }

    #[test]
    #[cfg(feature = "entra")]
    fn secrets_never_show_in_debug_or_errors() {
        let mut c = AuthConfig::default();
        set(&mut c, "auth.token", "tok-s3cr3t");
        set(&mut c, "auth.client_secret", "cs-s3cr3t");
        set(
            &mut c,
            "connection_string",
            "https://c.kusto.windows.net;AppClientId=a;AppKey=ck-s3cr3t;TenantId=t",
        );
        let d = format!("{c:?}");
        assert!(!d.contains("s3cr3t"), "{d}");
        let e = c.set("auth.token", "bad s3cr3t").unwrap_err();
        assert!(!e.message.contains("s3cr3t"));
        let cache = c
            .build(None, Duration::from_secs(1), crate::clock::system())
            .unwrap()
            .unwrap();
        assert!(!format!("{cache:?}").contains("s3cr3t"));
    }

    #[test]
    #[cfg(feature = "entra")]
    fn client_secret_from_file_and_connection_string() {
        let dir = std::env::temp_dir().join(format!("kedge-authcfg-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let f = dir.join("secret");
        std::fs::write(&f, "from-file\n").unwrap();
        let mut c = AuthConfig::default();
        set(&mut c, "auth.tenant", "t");
        set(&mut c, "auth.client_id", "c");
        set(&mut c, "auth.client_secret_file", f.to_str().unwrap());
        assert_eq!(c.method(), Some(Method::ClientSecret));
        assert_eq!(c.client_secret.as_ref().unwrap().expose(), "from-file");
        assert!(c
            .build(None, Duration::from_secs(1), crate::clock::system())
            .unwrap()
            .is_some());
        std::fs::remove_dir_all(&dir).unwrap();
        let e = AuthConfig::default()
            .set("auth.client_secret_file", "/nonexistent/x")
            .unwrap_err();
        assert!(e.message.contains("auth.client_secret_file"));

        let mut c = AuthConfig::default();
        set(
            &mut c,
            "connection_string",
            "Data Source=https://c.kusto.windows.net/db;AppClientId=a;AppKey=k;TenantId=t",
        );
        assert_eq!(c.method(), Some(Method::ClientSecret));
        assert_eq!(
            c.connection_string().unwrap().database.as_deref(),
            Some("db")
        );
        let cache = c
            .build(None, Duration::from_secs(1), crate::clock::system())
            .unwrap()
            .unwrap();
        assert_eq!(cache.source_name(), "client secret");
    }

    #[test]
    #[cfg(feature = "entra")]
    fn certificate_files_load_in_both_key_formats_and_check_the_thumbprint() {
        let fx = fixtures();
        for key in ["client-key-pkcs8.pem", "client-key-pkcs1.pem"] {
            let mut c = AuthConfig::default();
            set(&mut c, "auth.tenant", "t");
            set(&mut c, "auth.client_id", "c");
            set(
                &mut c,
                "auth.cert_file",
                fx.join("client-cert.pem").to_str().unwrap(),
            );
            set(&mut c, "auth.key_file", fx.join(key).to_str().unwrap());
            assert_eq!(c.method(), Some(Method::Certificate));
            assert_eq!(
                c.build(None, Duration::from_secs(1), crate::clock::system())
                    .unwrap()
                    .unwrap()
                    .source_name(),
                "client certificate"
            );
        }
        // The key file given as the certificate is refused at set; a key without its certificate at build.
        let e = AuthConfig::default()
            .set(
                "auth.key_file",
                fx.join("client-cert.pem").to_str().unwrap(),
            )
            .unwrap_err();
        assert!(e.message.contains("auth.key_file"));
        let mut c = AuthConfig::default();
        set(&mut c, "auth.tenant", "t");
        set(&mut c, "auth.client_id", "c");
        set(
            &mut c,
            "auth.cert_file",
            fx.join("client-cert.pem").to_str().unwrap(),
        );
        let e = c
            .build(None, Duration::from_secs(1), crate::clock::system())
            .unwrap_err();
        assert!(e.message.contains("no auth.key_file"), "{}", e.message);
        // A thumbprint in the connection string must match the certificate.
        let mut c = AuthConfig::default();
        set(&mut c, "connection_string", "https://c.kusto.windows.net;AppClientId=c;TenantId=t;AppCert=0000000000000000000000000000000000000000");
        set(
            &mut c,
            "auth.cert_file",
            fx.join("client-cert.pem").to_str().unwrap(),
        );
        set(
            &mut c,
            "auth.key_file",
            fx.join("client-key-pkcs8.pem").to_str().unwrap(),
        );
        let e = c
            .build(None, Duration::from_secs(1), crate::clock::system())
            .unwrap_err();
        assert!(
            e.message
                .contains("F415D9DF43C75B84AF4DAB5027FDEB3A8B420813"),
            "{}",
            e.message
        );
        // Inline PEM (the Go SDK's 'Application Certificate'), quoted because PEM has '='.
        let pem = format!(
            "{}{}",
            std::fs::read_to_string(fx.join("client-cert.pem")).unwrap(),
            std::fs::read_to_string(fx.join("client-key-pkcs1.pem")).unwrap()
        );
        let mut c = AuthConfig::default();
        set(&mut c, "connection_string", &format!("https://c.kusto.windows.net;AppClientId=c;TenantId=t;Application Certificate=\"{pem}\""));
        assert!(c
            .build(None, Duration::from_secs(1), crate::clock::system())
            .unwrap()
            .is_some());
    }

    #[test]
    #[cfg(feature = "managed-identity")]
    fn managed_identity_and_arc_settings() {
        let mut c = AuthConfig::default();
        set(&mut c, "auth.method", "managed_identity");
        set(&mut c, "auth.imds_endpoint", "http://127.0.0.1:9/token");
        assert_eq!(
            c.build(None, Duration::from_secs(1), crate::clock::system())
                .unwrap()
                .unwrap()
                .source_name(),
            "managed identity (IMDS)"
        );
        assert_eq!(
            AuthConfig::default()
                .set("auth.imds_endpoint", "http://10.1.1.1/token")
                .unwrap_err()
                .kind,
            ErrorKind::InsecureTransport
        );
        let mut c = AuthConfig::default();
        set(&mut c, "auth.method", "arc");
        set(
            &mut c,
            "auth.arc_endpoint",
            "http://localhost:40342/metadata/identity/oauth2/token",
        );
        assert_eq!(
            c.build(None, Duration::from_secs(1), crate::clock::system())
                .unwrap()
                .unwrap()
                .source_name(),
            "managed identity (Azure Arc)"
        );
        set(&mut c, "auth.client_id", "x");
        assert!(c
            .build(None, Duration::from_secs(1), crate::clock::system())
            .unwrap_err()
            .message
            .contains("system-assigned"));
        assert!(AuthConfig::default()
            .set("auth.arc_key_dir", "relative")
            .is_err());
    }

    #[test]
    fn methods_left_out_of_the_build_fail_naming_their_cargo_feature() {
        for (m, feature, compiled_in) in [
            ("client_secret", "entra", cfg!(feature = "entra")),
            ("certificate", "entra", cfg!(feature = "entra")),
            ("workload_identity", "entra", cfg!(feature = "entra")),
            (
                "managed_identity",
                "managed-identity",
                cfg!(feature = "managed-identity"),
            ),
            (
                "arc",
                "managed-identity",
                cfg!(feature = "managed-identity"),
            ),
            ("token", "", true),
            ("callback", "", true),
        ] {
            match AuthConfig::default().set("auth.method", m) {
                Ok(taken) => assert!(taken && compiled_in, "{m} taken without its feature"),
                Err(e) => {
                    assert!(!compiled_in, "{m}: {}", e.message);
                    assert_eq!(e.kind, ErrorKind::ConfigInvalidValue, "{m}");
                    assert!(
                        e.message.contains(&format!("cargo feature `{feature}`")),
                        "{m}: {}",
                        e.message
                    );
                }
            }
        }
        // A method implied by a connection string is refused when the cache is built, not replaced by another.
        let mut c = AuthConfig::default();
        set(
            &mut c,
            "connection_string",
            "https://c.kusto.windows.net;AppClientId=a;AppKey=k;TenantId=t",
        );
        let built = c.build(None, Duration::from_secs(1), crate::clock::system());
        if cfg!(feature = "entra") {
            assert_eq!(built.unwrap().unwrap().source_name(), "client secret");
        } else {
            let e = built.unwrap_err();
            assert_eq!(e.kind, ErrorKind::ConfigInvalidValue);
            assert!(e.message.contains("cargo feature `entra`"), "{}", e.message);
        }
    }

    #[test]
    fn callback_and_token() {
        let mut c = AuthConfig::default();
        c.set_callback(Arc::new(|| Ok(("t".to_owned(), 0))));
        assert_eq!(c.method(), Some(Method::Callback));
        let cache = c
            .build(None, Duration::from_secs(1), crate::clock::system())
            .unwrap()
            .unwrap();
        assert_eq!(
            cache
                .get(&ureq::Agent::new_with_defaults(), false)
                .unwrap()
                .expose(),
            "t"
        );
        let mut c = AuthConfig::default();
        set(&mut c, "auth.token", "abc");
        let cache = c
            .build(None, Duration::from_secs(1), crate::clock::system())
            .unwrap()
            .unwrap();
        assert!(!cache.can_refresh());
        assert_eq!(
            cache
                .get(&ureq::Agent::new_with_defaults(), true)
                .unwrap()
                .expose(),
            "abc"
        );
    }

    #[test]
    fn cloud_settings_reach_the_cache() {
        let mut c = AuthConfig::default();
        set(
            &mut c,
            "auth.authority_host",
            "https://login.chinacloudapi.cn/",
        );
        set(
            &mut c,
            "auth.resource",
            "https://kusto.kusto.chinacloudapi.cn/.default",
        );
        set(&mut c, "auth.metadata", "false");
        let cc = c.cloud_config(Some("https://x.kusto.chinacloudapi.cn/"));
        let cloud = cc.without_metadata();
        assert_eq!(cloud.authority_host, "https://login.chinacloudapi.cn");
        assert_eq!(cloud.resource, "https://kusto.kusto.chinacloudapi.cn");
        assert!(!cc.needs_fetch());
        assert_eq!(
            AuthConfig::default()
                .set("auth.authority_host", "http://login.example")
                .unwrap_err()
                .kind,
            ErrorKind::InsecureTransport
        );
    }
}
