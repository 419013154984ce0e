//! Kusto connection strings: `Data Source=https://c.region.kusto.windows.net;Initial Catalog=db;AAD Federated
//! Security=True;Application Client Id=..;Application Key=..;Authority Id=..`.
//!
//! Keywords are case-insensitive and spaces and underscores in them are ignored (the Python SDK's normalisation);
//! values may be quoted with `"` or `'` (a doubled quote inside stands for one), which is how a value with `;` is
//! written. A first element without `=` is the Data Source, and a path on the Data Source is the database, as in
//! `https://help.kusto.windows.net/Samples`.
//!
//! The keyword table follows azure-kusto-python's `kcsb.json` and azure-kusto-go's `kcsb.go`. Keywords for sign-in
//! flows a headless device cannot use (user name/password, interactive, device code, certificate stores) are
//! refused with a message that says what to use instead; unknown keywords are refused by name. Values of secret
//! keywords never appear in a message.

use std::fmt;

use crate::error::{Error, ErrorKind};

use crate::secret::SecretString;

/// The credential a connection string describes. Files are named, not read: [`super::AuthConfig`] loads them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CredentialSpec {
    /// No credential (`Fed=false` or none given): requests go without a token.
    None,
    /// `User Token` / `Application Token`: a bearer token used as is.
    Token(SecretString),
    /// `Application Client Id` + `Application Key` (+ `Authority Id`).
    ClientSecret {
        /// Tenant.
        tenant: Option<String>,
        /// Application (client) id.
        client_id: String,
        /// The secret.
        secret: SecretString,
    },
    /// `Application Client Id` + a certificate (+ `Authority Id`).
    Certificate {
        /// Tenant.
        tenant: Option<String>,
        /// Application (client) id.
        client_id: String,
        /// `Application Certificate`: PEM text holding the certificate and its private key (as in the Go SDK).
        pem: Option<SecretString>,
        /// `Application Certificate Thumbprint`: the SHA-1 the loaded certificate must have (hex).
        thumbprint: Option<String>,
        /// `Application Certificate SendX5c`: send the public certificate (`x5c`) for subject-name/issuer auth.
        send_x5c: bool,
    },
}

/// A parsed connection string.
#[derive(Clone, PartialEq, Eq)]
pub struct ConnectionString {
    /// The cluster URL, without trailing slash or path.
    pub cluster: String,
    /// `Initial Catalog`, or the path of the Data Source.
    pub database: Option<String>,
    /// What to authenticate with.
    pub credential: CredentialSpec,
    /// `Application Name for Tracing` (the `x-ms-app` header).
    pub app_name: Option<String>,
    /// `User Name for Tracing` (the `x-ms-user` header).
    pub user_name: Option<String>,
}

impl fmt::Debug for ConnectionString {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // CredentialSpec's own Debug hides secrets through SecretString.
        f.debug_struct("ConnectionString")
            .field("cluster", &self.cluster)
            .field("database", &self.database)
            .field("credential", &self.credential)
            .finish_non_exhaustive()
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kw {
    DataSource,
    InitialCatalog,
    Fed,
    ClientId,
    AppKey,
    Authority,
    AppToken,
    UserToken,
    AppCert,
    Thumbprint,
    SendX5c,
    TraceApp,
    TraceUser,
    Accept,
}

/// Normalised keyword (lower case, no spaces or underscores) → keyword. Names and aliases from azure-kusto-python
/// `kcsb.json` and azure-kusto-go `kcsb.go`.
const KEYWORDS: &[(&str, Kw)] = &[
    ("datasource", Kw::DataSource),
    ("server", Kw::DataSource),
    ("addr", Kw::DataSource),
    ("address", Kw::DataSource),
    ("networkaddress", Kw::DataSource),
    ("initialcatalog", Kw::InitialCatalog),
    ("database", Kw::InitialCatalog),
    ("aadfederatedsecurity", Kw::Fed),
    ("federatedsecurity", Kw::Fed),
    ("aadfed", Kw::Fed),
    ("fed", Kw::Fed),
    ("federated", Kw::Fed),
    ("applicationclientid", Kw::ClientId),
    ("appclientid", Kw::ClientId),
    ("applicationkey", Kw::AppKey),
    ("appkey", Kw::AppKey),
    ("authorityid", Kw::Authority),
    ("authority", Kw::Authority),
    ("tenantid", Kw::Authority),
    ("tenant", Kw::Authority),
    ("tid", Kw::Authority),
    ("applicationtoken", Kw::AppToken),
    ("apptoken", Kw::AppToken),
    ("usertoken", Kw::UserToken),
    ("usrtoken", Kw::UserToken),
    ("applicationcertificate", Kw::AppCert),
    ("applicationcertificatethumbprint", Kw::Thumbprint),
    ("appcert", Kw::Thumbprint),
    ("applicationcertificatesendx5c", Kw::SendX5c),
    ("applicationcertificatex5c", Kw::SendX5c),
    ("sendx5c", Kw::SendX5c),
    ("applicationcertificatesendpubliccertificate", Kw::SendX5c),
    ("sendcertificatechain", Kw::SendX5c),
    ("applicationnamefortracing", Kw::TraceApp),
    ("traceappname", Kw::TraceApp),
    ("usernamefortracing", Kw::TraceUser),
    ("traceusername", Kw::TraceUser),
    ("accept", Kw::Accept),
];

/// Keywords the SDKs know that a device cannot use, with what to do instead.
const REFUSED: &[(&[&str], &str)] = &[
    (
        &["userid", "user", "uid", "loginhint", "aaduserid", "password", "pwd"],
        "user sign-in is not supported on a device: use an application (Application Client Id with Application Key or a certificate), a managed identity (auth.method=managed_identity) or a token",
    ),
    (
        &[
            "applicationcertificatesubjectdistinguishedname",
            "applicationcertificatesubject",
            "applicationcertificateissuerdistinguishedname",
            "applicationcertificateissuer",
        ],
        "there is no certificate store to search: give the certificate and key files (auth.cert_file, auth.key_file) and set Application Certificate SendX5c=true for subject-name/issuer authentication",
    ),
    (
        &["interactivelogin", "azcli", "dstsfederatedsecurity", "dstsfed", "dststokentype"],
        "this sign-in flow is not available on a device",
    ),
];

fn invalid(msg: String) -> Error {
    Error::new(ErrorKind::ConfigInvalidValue, msg)
}

fn normalize_keyword(k: &str) -> String {
    k.chars()
        .filter(|c| !c.is_whitespace() && *c != '_')
        .flat_map(char::to_lowercase)
        .collect()
}

/// Splits into (keyword, value) pairs, honouring quotes.
fn split(s: &str) -> Result<Vec<(String, String)>, Error> {
    let mut out = Vec::new();
    let b = s.as_bytes();
    let mut i = 0;
    while i < b.len() {
        // Keyword: up to '=' or ';'.
        let k_start = i;
        while i < b.len() && b[i] != b'=' && b[i] != b';' {
            i += 1;
        }
        let key = s[k_start..i].trim().to_owned();
        if i >= b.len() || b[i] == b';' {
            // An element without '=': only the first may be (the Data Source); empty ones are skipped.
            if !key.is_empty() {
                if !out.is_empty() {
                    // The text is not echoed: without a keyword we cannot tell whether it is a secret.
                    return Err(invalid(format!(
                        "connection string: element {} has no '=' (write keyword=value)",
                        out.len() + 1
                    )));
                }
                out.push((String::new(), key));
            }
            i += 1;
            continue;
        }
        i += 1; // '='
        while i < b.len() && b[i] == b' ' {
            i += 1;
        }
        let value = if i < b.len() && (b[i] == b'"' || b[i] == b'\'') {
            let q = b[i];
            i += 1;
            let mut v = String::new();
            let mut start = i;
            loop {
                if i >= b.len() {
                    return Err(invalid(format!(
                        "connection string: the value of '{key}' has no closing quote"
                    )));
                }
                if b[i] == q {
                    v.push_str(&s[start..i]);
                    if b.get(i + 1) == Some(&q) {
                        // A doubled quote is one quote character.
                        v.push(q as char);
                        i += 2;
                        start = i;
                        continue;
                    }
                    i += 1;
                    break;
                }
                i += 1;
            }
            while i < b.len() && b[i] == b' ' {
                i += 1;
            }
            if i < b.len() && b[i] != b';' {
                return Err(invalid(format!(
                    "connection string: unexpected text after the quoted value of '{key}'"
                )));
            }
            v
        } else {
            let start = i;
            while i < b.len() && b[i] != b';' {
                i += 1;
            }
            s[start..i].trim().to_owned()
        };
        i += 1; // ';'
        if key.is_empty() {
            return Err(invalid(
                "connection string: an element has no keyword before '='".into(),
            ));
        }
        out.push((key, value));
    }
    Ok(out)
}

fn parse_bool(key: &str, v: &str) -> Result<bool, Error> {
    crate::config::parse_bool_word(v).ok_or_else(|| {
        invalid(format!(
            "connection string: '{key}' must be true or false, not '{v}'"
        ))
    })
}

/// The one check of a tenant or client id (config keys and connection strings alike): it goes into a URL path
/// and a form, so a GUID or a domain name, 1..256 letters, digits, `-`, `.` and `_`.
pub(super) fn is_id_text(v: &str) -> bool {
    !v.is_empty()
        && v.len() <= 256
        && v.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_'))
}

/// An identifier that goes into a URL path or form: tenant and client ids are GUIDs or domain names.
fn check_id(key: &str, v: &str) -> Result<String, Error> {
    if !is_id_text(v) {
        return Err(invalid(format!(
            "connection string: '{key}' must be a GUID or a domain name, not '{v}'"
        )));
    }
    Ok(v.to_owned())
}

/// Splits `https://host[:port][/db]` into the cluster URL and the database.
fn data_source(key: &str, v: &str) -> Result<(String, Option<String>), Error> {
    // A URL with user info may carry a password: such a value is not echoed.
    let shown = if v.contains('@') { "***" } else { v };
    let bad = |why: &str| {
        invalid(format!(
            "connection string: '{key}' = '{shown}' is not a cluster URL: {why}"
        ))
    };
    let v = v.trim();
    let lower = v.to_ascii_lowercase();
    let scheme_len = if lower.starts_with("https://") {
        8
    } else if lower.starts_with("http://") {
        7
    } else {
        return Err(bad("it must start with https://"));
    };
    let rest = &v[scheme_len..];
    let (host, path) = match rest.find('/') {
        Some(p) => (&rest[..p], rest[p + 1..].trim_end_matches('/')),
        None => (rest, ""),
    };
    if host.is_empty() || host.contains(['?', '#', '@', ' ']) {
        return Err(bad("give scheme, host and optional port"));
    }
    if path.contains(['/', '?', '#']) {
        return Err(bad("only a database name may follow the host"));
    }
    let db = (!path.is_empty()).then(|| path.to_owned());
    Ok((format!("{}{}", &v[..scheme_len], host), db))
}

/// Parses a Kusto connection string into the cluster, the database and the credential it describes.
pub fn parse_connection_string(s: &str) -> Result<ConnectionString, Error> {
    let mut cluster = None;
    let mut database = None;
    let mut fed = None;
    let (mut client_id, mut app_key, mut tenant) = (None, None, None);
    let (mut app_token, mut user_token, mut cert_pem, mut thumbprint) = (None, None, None, None);
    let mut send_x5c = false;
    let (mut app_name, mut user_name) = (None, None);
    let mut seen: Vec<Kw> = Vec::new();

    for (raw_key, value) in split(s)? {
        let (kw, key) = if raw_key.is_empty() {
            (Kw::DataSource, "Data Source".to_owned())
        } else {
            let norm = normalize_keyword(&raw_key);
            if let Some((_, why)) = REFUSED
                .iter()
                .find(|(names, _)| names.contains(&norm.as_str()))
            {
                return Err(invalid(format!(
                    "connection string: '{raw_key}' is not supported: {why}"
                )));
            }
            let kw = KEYWORDS
                .iter()
                .find(|(n, _)| *n == norm)
                .map(|(_, k)| *k)
                .ok_or_else(|| {
                    invalid(format!("connection string: unknown keyword '{raw_key}'"))
                })?;
            (kw, raw_key)
        };
        if seen.contains(&kw) {
            return Err(invalid(format!(
                "connection string: '{key}' is given twice"
            )));
        }
        seen.push(kw);
        if value.is_empty() {
            return Err(invalid(format!(
                "connection string: '{key}' has an empty value"
            )));
        }
        // Secret values are moved, never formatted into a message.
        let secret = || SecretString::new(value.as_str());
        match kw {
            Kw::DataSource => {
                let (c, db) = data_source(&key, &value)?;
                cluster = Some(c);
                if db.is_some() {
                    database = db;
                }
            }
            Kw::InitialCatalog => database = Some(value.clone()),
            Kw::Fed => fed = Some(parse_bool(&key, &value)?),
            Kw::ClientId => client_id = Some(check_id(&key, &value)?),
            Kw::Authority => tenant = Some(check_id(&key, &value)?),
            Kw::AppKey => app_key = Some(secret()),
            Kw::AppToken => app_token = Some(secret()),
            Kw::UserToken => user_token = Some(secret()),
            Kw::AppCert => cert_pem = Some(secret()),
            Kw::Thumbprint => {
                let t: String = value.chars().filter(|c| !matches!(c, ':' | ' ')).collect();
                if t.len() != 40 || !t.bytes().all(|b| b.is_ascii_hexdigit()) {
                    return Err(invalid(format!(
                        "connection string: '{key}' must be a SHA-1 thumbprint, 40 hexadecimal digits"
                    )));
                }
                thumbprint = Some(t.to_ascii_uppercase());
            }
            Kw::SendX5c => send_x5c = parse_bool(&key, &value)?,
            Kw::TraceApp => app_name = Some(value.clone()),
            Kw::TraceUser => user_name = Some(value.clone()),
            Kw::Accept => {
                parse_bool(&key, &value)?;
            }
        }
    }

    let cluster = cluster.ok_or_else(|| {
        Error::new(
            ErrorKind::ConfigIncomplete,
            "connection string: no Data Source (the cluster URL)",
        )
    })?;
    let tokens = app_token.is_some() as u8 + user_token.is_some() as u8;
    let app = app_key.is_some() as u8 + (cert_pem.is_some() || thumbprint.is_some()) as u8;
    if tokens + app > 1 {
        return Err(invalid(
            "connection string: give one credential: a token, an Application Key, or a certificate"
                .into(),
        ));
    }
    let credential = if let Some(t) = app_token.or(user_token) {
        CredentialSpec::Token(t)
    } else if app == 1 {
        let client_id = client_id.ok_or_else(|| {
            Error::new(
                ErrorKind::ConfigIncomplete,
                "connection string: an application credential needs 'Application Client Id'",
            )
        })?;
        match app_key {
            Some(secret) => CredentialSpec::ClientSecret {
                tenant,
                client_id,
                secret,
            },
            None => CredentialSpec::Certificate {
                tenant,
                client_id,
                pem: cert_pem,
                thumbprint,
                send_x5c,
            },
        }
    } else if client_id.is_some() {
        return Err(Error::new(
            ErrorKind::ConfigIncomplete,
            "connection string: 'Application Client Id' needs 'Application Key' or a certificate (or set auth.method=managed_identity for a user-assigned identity)",
        ));
    } else {
        CredentialSpec::None
    };
    if fed == Some(false) && credential != CredentialSpec::None {
        return Err(invalid(
            "connection string: 'AAD Federated Security' is false but a credential is given".into(),
        ));
    }
    Ok(ConnectionString {
        cluster,
        database,
        credential,
        app_name,
        user_name,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const C: &str = "https://mycluster.westeurope.kusto.windows.net";
    const GUID: &str = "00000000-0000-0000-0000-000000000001";

    fn ok(s: &str) -> ConnectionString {
        parse_connection_string(s).unwrap_or_else(|e| panic!("{s}: {}", e.message))
    }

    #[test]
    fn valid_connection_strings() {
        let secret = CredentialSpec::ClientSecret {
            tenant: Some("contoso.com".into()),
            client_id: GUID.into(),
            secret: SecretString::new("k;e'y"),
        };
        let cases: Vec<(String, &str, Option<&str>, CredentialSpec)> = vec![
            (C.into(), C, None, CredentialSpec::None),
            (format!("{C}/"), C, None, CredentialSpec::None),
            (format!("{C}/Samples; Fed=true; Accept=true"), C, Some("Samples"), CredentialSpec::None),
            (format!("Data Source={C};Initial Catalog=db1"), C, Some("db1"), CredentialSpec::None),
            (format!("data source = {C} ; database = db1"), C, Some("db1"), CredentialSpec::None),
            (format!("Server={C}"), C, None, CredentialSpec::None),
            (format!("Addr={C}"), C, None, CredentialSpec::None),
            (format!("Network Address={C}"), C, None, CredentialSpec::None),
            (format!("NETWORK_ADDRESS={C}"), C, None, CredentialSpec::None),
            (
                format!("Data Source={C};AAD Federated Security=True;Application Client Id={GUID};Application Key=\"k;e'y\";Authority Id=contoso.com"),
                C, None, secret.clone(),
            ),
            (
                format!("{C};Fed=true;AppClientId={GUID};AppKey='k;e''y';TenantId=contoso.com"),
                C, None, secret.clone(),
            ),
            (
                format!("Addr={C};appclientid={GUID};APPKEY=\"k;e'y\";tid=contoso.com"),
                C, None, secret,
            ),
            (format!("{C};User Token=eyJ.a.b"), C, None, CredentialSpec::Token(SecretString::new("eyJ.a.b"))),
            (format!("{C};UsrToken=eyJ.a.b"), C, None, CredentialSpec::Token(SecretString::new("eyJ.a.b"))),
            (format!("{C};AppToken=eyJ.a.b"), C, None, CredentialSpec::Token(SecretString::new("eyJ.a.b"))),
            (
                format!("{C};Application Client Id={GUID};Application Certificate Thumbprint=f4:15:d9:df:43:c7:5b:84:af:4d:ab:50:27:fd:eb:3a:8b:42:08:13;Authority Id={GUID};SendX5c=true"),
                C, None,
                CredentialSpec::Certificate {
                    tenant: Some(GUID.into()),
                    client_id: GUID.into(),
                    pem: None,
                    thumbprint: Some("F415D9DF43C75B84AF4DAB5027FDEB3A8B420813".into()),
                    send_x5c: true,
                },
            ),
            (format!("Data Source=\"{C}\";Database='my db'"), C, Some("my db"), CredentialSpec::None),
            (format!("{C};;Fed=True;"), C, None, CredentialSpec::None),
        ];
        for (s, cluster, db, cred) in cases {
            let cs = ok(&s);
            assert_eq!(cs.cluster, cluster, "{s}");
            assert_eq!(cs.database.as_deref(), db, "{s}");
            assert_eq!(cs.credential, cred, "{s}");
        }
        let cs = ok(&format!(
            "{C};Application Name for Tracing=gw-7;traceusername=\"ops\""
        ));
        assert_eq!(cs.app_name.as_deref(), Some("gw-7"));
        assert_eq!(cs.user_name.as_deref(), Some("ops"));
    }

    #[test]
    fn invalid_connection_strings_name_the_keyword_not_the_secret() {
        let cases: Vec<(String, ErrorKind, &str)> = vec![
            ("".into(), ErrorKind::ConfigIncomplete, "Data Source"),
            (
                "Fed=true".into(),
                ErrorKind::ConfigIncomplete,
                "Data Source",
            ),
            (
                "mycluster".into(),
                ErrorKind::ConfigInvalidValue,
                "https://",
            ),
            (
                format!("{C};Colour=blue"),
                ErrorKind::ConfigInvalidValue,
                "'Colour'",
            ),
            (
                format!("{C};Fed=maybe"),
                ErrorKind::ConfigInvalidValue,
                "'Fed'",
            ),
            (
                format!("{C};AAD User ID=me@x.com;Password=hunter2"),
                ErrorKind::ConfigInvalidValue,
                "user sign-in",
            ),
            (
                format!("{C};Application Certificate Subject Distinguished Name=CN=x"),
                ErrorKind::ConfigInvalidValue,
                "certificate store",
            ),
            (
                format!("{C};AppClientId={GUID};AppKey=\"hunter2"),
                ErrorKind::ConfigInvalidValue,
                "closing quote",
            ),
            (
                format!("{C};AppKey=hunter2"),
                ErrorKind::ConfigIncomplete,
                "Application Client Id",
            ),
            (
                format!("{C};AppClientId={GUID}"),
                ErrorKind::ConfigIncomplete,
                "Application Key",
            ),
            (
                format!("{C};AppClientId=a/b;AppKey=hunter2"),
                ErrorKind::ConfigInvalidValue,
                "'AppClientId'",
            ),
            (
                format!("{C};AppClientId={GUID};AppKey=hunter2;TenantId=../x"),
                ErrorKind::ConfigInvalidValue,
                "'TenantId'",
            ),
            (
                format!("{C};AppClientId={GUID};AppKey=hunter2;AppToken=hunter2"),
                ErrorKind::ConfigInvalidValue,
                "one credential",
            ),
            (
                format!("{C};Fed=false;AppToken=hunter2"),
                ErrorKind::ConfigInvalidValue,
                "false",
            ),
            (
                format!("{C};AppCert=xyz;AppClientId={GUID}"),
                ErrorKind::ConfigInvalidValue,
                "40 hexadecimal",
            ),
            (
                format!("{C};Database=a;Initial Catalog=b"),
                ErrorKind::ConfigInvalidValue,
                "twice",
            ),
            (
                format!("{C};AppKey="),
                ErrorKind::ConfigInvalidValue,
                "empty",
            ),
            (
                format!("{C};=hunter2"),
                ErrorKind::ConfigInvalidValue,
                "no keyword",
            ),
            (
                format!("{C};hunter2"),
                ErrorKind::ConfigInvalidValue,
                "no '='",
            ),
            (
                format!("{C};AppKey=\"hunter2\" trailing"),
                ErrorKind::ConfigInvalidValue,
                "after the quoted",
            ),
            (
                format!("{C}/db/extra"),
                ErrorKind::ConfigInvalidValue,
                "database name",
            ),
            (
                "https://user:hunter2@host".into(),
                ErrorKind::ConfigInvalidValue,
                "scheme, host",
            ),
            (
                format!("{C};Interactive Login=true"),
                ErrorKind::ConfigInvalidValue,
                "not available",
            ),
        ];
        for (s, kind, needle) in cases {
            let e = parse_connection_string(&s).unwrap_err();
            assert_eq!(e.kind, kind, "{s}: {}", e.message);
            assert!(e.message.contains(needle), "{s}: {}", e.message);
            assert!(!e.message.contains("hunter2"), "{s}: {}", e.message);
        }
    }

    #[test]
    fn debug_hides_secrets() {
        let cs = ok(&format!("{C};AppClientId={GUID};AppKey=hunter2;TenantId=t"));
        assert!(!format!("{cs:?}").contains("hunter2"));
    }
}
