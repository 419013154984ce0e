//! The proxy settings of a transport: the `proxy.url` and `proxy.no_proxy` config keys, else `HTTPS_PROXY` and
//! `NO_PROXY` from the environment. Only HTTP CONNECT proxies; a password in `proxy.url` is a secret: it never
//! reaches `Debug` or a message.

use std::fmt;

use crate::error::{Error, ErrorKind};
use crate::secret::SecretString;

/// `proxy.url` and `proxy.no_proxy` as set, resolved into a `ureq::Proxy` by [`ProxyConfig::proxy`].
#[derive(Clone, Default)]
pub struct ProxyConfig {
    /// `None`: take the environment's; `none` (any case): no proxy at all.
    url: Option<SecretString>,
    no_proxy: Option<String>,
}

impl fmt::Debug for ProxyConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ProxyConfig")
            .field("url", &self.url.as_ref().map(|p| redact_proxy(p.expose())))
            .field("no_proxy", &self.no_proxy)
            .finish()
    }
}

fn invalid(key: &str, why: &str) -> Error {
    Error::new(
        ErrorKind::ConfigInvalidValue,
        format!("config key '{key}': {why}"),
    )
}

impl ProxyConfig {
    /// Nothing set: the environment's proxy applies.
    pub const fn new() -> ProxyConfig {
        ProxyConfig {
            url: None,
            no_proxy: None,
        }
    }

    /// Sets `proxy.url` or `proxy.no_proxy`. Returns `Ok(false)` for any other key (the caller tries its own), and
    /// an error naming the key, never the URL (it may hold a password), when the value is bad.
    pub fn set(&mut self, key: &str, value: &str) -> Result<bool, Error> {
        match key {
            "proxy.url" => {
                let v = value.trim();
                if !v.eq_ignore_ascii_case("none") {
                    build_proxy(v, None).map_err(|why| invalid(key, why))?;
                }
                self.url = Some(SecretString::new(v));
            }
            "proxy.no_proxy" => self.no_proxy = Some(value.trim().to_owned()),
            _ => return Ok(false),
        }
        Ok(true)
    }

    /// The proxy for an agent: `proxy.url` (with `proxy.no_proxy`), else `HTTPS_PROXY`/`https_proxy` (with
    /// `NO_PROXY`/`no_proxy`); `proxy.url=none` turns the environment off.
    pub fn proxy(&self) -> Result<Option<ureq::Proxy>, Error> {
        let env = |k: &str| std::env::var(k).ok().filter(|v| !v.trim().is_empty());
        let (url, no_proxy, from) = match &self.url {
            Some(u) if u.expose().eq_ignore_ascii_case("none") => return Ok(None),
            Some(u) => (u.clone(), self.no_proxy.clone(), "proxy.url"),
            None => match env("HTTPS_PROXY").or_else(|| env("https_proxy")) {
                Some(u) => (
                    SecretString::new(u),
                    self.no_proxy
                        .clone()
                        .or_else(|| env("NO_PROXY"))
                        .or_else(|| env("no_proxy")),
                    "HTTPS_PROXY",
                ),
                None => return Ok(None),
            },
        };
        build_proxy(url.expose(), no_proxy.as_deref())
            .map(Some)
            .map_err(|why| invalid(from, why))
    }
}

/// `scheme://user:***@host:port` for showing a proxy URL.
fn redact_proxy(u: &str) -> String {
    match (u.find("://"), u.rfind('@')) {
        (Some(s), Some(at)) if at > s => format!("{}***@{}", &u[..s + 3], &u[at + 1..]),
        (None, Some(at)) => format!("***@{}", &u[at + 1..]),
        _ => u.to_owned(),
    }
}

/// A `ureq::Proxy` from `http://[user:pass@]host:port` and a comma-separated no-proxy list. Messages never
/// contain the URL (it may hold a password).
fn build_proxy(url: &str, no_proxy: Option<&str>) -> Result<ureq::Proxy, &'static str> {
    const EXPECTED: &str = "expected http://[user:pass@]host:port";
    let lower = url.get(..8).unwrap_or(url).to_ascii_lowercase();
    if !(lower.starts_with("http://") || lower.starts_with("https://")) {
        return Err("expected http://[user:pass@]host:port (or https://)");
    }
    let parsed = ureq::Proxy::new(url).map_err(|_| EXPECTED)?;
    let Some(no_proxy) = no_proxy.filter(|n| !n.trim().is_empty()) else {
        return Ok(parsed);
    };
    // `Proxy::new` takes no exclusions: rebuild through the builder with the parsed parts.
    let mut b = ureq::Proxy::builder(parsed.protocol())
        .host(parsed.host())
        .port(parsed.port());
    if let Some(u) = parsed.username() {
        b = b.username(u);
    }
    if let Some(p) = parsed.password() {
        b = b.password(p);
    }
    for entry in no_proxy.split(',').map(str::trim).filter(|e| !e.is_empty()) {
        b = b.no_proxy(entry);
    }
    b.build().map_err(|_| EXPECTED)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(c: &mut ProxyConfig, k: &str, v: &str) {
        assert!(c.set(k, v).unwrap(), "{k}");
    }

    #[test]
    fn proxy_settings() {
        let mut c = ProxyConfig::default();
        set(&mut c, "proxy.url", "http://user:pw@proxy.local:3128");
        set(&mut c, "proxy.no_proxy", "localhost, .internal.example");
        let p = c.proxy().unwrap().unwrap();
        assert_eq!(p.host(), "proxy.local");
        assert_eq!(p.port(), 3128);
        assert_eq!(p.username(), Some("user"));
        assert_eq!(p.password(), Some("pw"));
        assert!(!p.is_from_env());
        assert!(p.is_no_proxy(&"http://localhost/x".parse().unwrap()));
        assert!(p.is_no_proxy(&"https://a.internal.example/x".parse().unwrap()));
        assert!(!p.is_no_proxy(&"https://login.microsoftonline.com/x".parse().unwrap()));
        set(&mut c, "proxy.url", "NONE");
        assert!(c.proxy().unwrap().is_none());
        for bad in ["socks5://h:1", "not a url", "ftp://h", "http://"] {
            let e = ProxyConfig::default().set("proxy.url", bad).unwrap_err();
            assert_eq!(e.kind, ErrorKind::ConfigInvalidValue, "{bad}");
            assert!(
                e.message
                    .starts_with("config key 'proxy.url': expected http://"),
                "{}",
                e.message
            );
        }
        assert!(!ProxyConfig::default().set("auth.token", "x").unwrap());
    }

    #[test]
    fn a_proxy_password_never_shows() {
        let mut c = ProxyConfig::default();
        set(
            &mut c,
            "proxy.url",
            "http://user:px-s3cr3t@proxy.local:3128",
        );
        let d = format!("{c:?}");
        assert!(!d.contains("s3cr3t"), "{d}");
        assert!(d.contains("\"http://***@proxy.local:3128\""), "{d}");
        let e = c.set("proxy.url", "ftp://u:s3cr3t@x").unwrap_err();
        assert!(!e.message.contains("s3cr3t"), "{}", e.message);
        assert_eq!(redact_proxy("u:p@h:1"), "***@h:1");
        assert_eq!(redact_proxy("http://h:1"), "http://h:1");
    }
}
