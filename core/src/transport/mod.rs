//! HTTP over TLS, and nothing of Kusto: one `ureq` agent per client with keep-alive, rustls with ring,
//! verification always on, every phase bounded by the configured timeouts, no redirects followed. [`Transport::send`]
//! sends one request and hands back the status, `Retry-After`, the few response headers the caller asked for, and
//! a prefix of the body bounded by the caller's buffer; a request that got no answer is a [`TransportError`].
//! What an answer or an error means is the caller's business (`response` and `network` for Kusto delivery).
//!
//! Memory per request is fixed: the response headers are kept in a fixed-size [`KeptHeaders`], the body goes into
//! the caller's buffer, and an error is a fixed-size value.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ureq::tls::{RootCerts, TlsConfig, TlsProvider};
use ureq::unversioned::resolver::{DefaultResolver, ResolvedSocketAddrs, Resolver};
use ureq::unversioned::transport::{DefaultConnector, NextTimeout};

use crate::error::Error;

pub(crate) mod body;
mod error;
mod proxy;
#[cfg(test)]
pub(crate) mod test_server;

pub use error::{CertificateProblem, TransportError, TransportErrorKind};
pub use proxy::ProxyConfig;

/// HTTP read buffer per connection: holds the response head.
pub const INPUT_BUFFER_BYTES: usize = 16 * 1024;
/// HTTP write buffer per connection: the request head and body pieces.
pub const OUTPUT_BUFFER_BYTES: usize = 16 * 1024;
/// Response headers one request may ask to keep (besides `Retry-After`).
pub const MAX_KEPT_HEADERS: usize = 4;
/// Bytes of names and values the kept headers share.
pub const KEPT_HEADER_BYTES: usize = 512;

/// What a transport is built from: timeouts, trust store, the plain-http rules and the proxy. `Config` makes one
/// with `Config::transport_config`; it borrows the CA PEM and the proxy settings rather than copying them.
#[derive(Clone, Copy, Debug)]
pub struct TransportConfig<'a> {
    /// TCP + TLS connection setup bound (proxy tunnel included).
    pub connect_timeout: Duration,
    /// Bound on sending the head and the body of one request.
    pub send_timeout: Duration,
    /// Bound on waiting for the response head, and on reading its body.
    pub recv_timeout: Duration,
    /// PEM CA certificates trusted besides (or, without `bundled_roots`, instead of) the bundled roots.
    pub ca_pem: &'a [u8],
    /// Trust Mozilla's root certificates compiled into the library.
    pub bundled_roots: bool,
    /// Allow `http://` to loopback hosts.
    pub allow_plain: bool,
    /// Allow `http://` to any host (with `allow_plain`); an `Authorization` header still never goes there.
    pub allow_plain_remote: bool,
    /// `proxy.url` / `proxy.no_proxy`, else the environment's.
    pub proxy: &'a ProxyConfig,
}

/// No proxy settings: the environment's `HTTPS_PROXY` applies.
static NO_PROXY_SETTINGS: ProxyConfig = ProxyConfig::new();

impl Default for TransportConfig<'static> {
    /// The library's defaults: 10 s to connect, 30 s each way, bundled roots, https only, the environment's proxy.
    fn default() -> Self {
        TransportConfig {
            connect_timeout: Duration::from_secs(10),
            send_timeout: Duration::from_secs(30),
            recv_timeout: Duration::from_secs(30),
            ca_pem: &[],
            bundled_roots: true,
            allow_plain: false,
            allow_plain_remote: false,
            proxy: &NO_PROXY_SETTINGS,
        }
    }
}

/// An HTTP method: what Kusto and Azure blob, queue and table storage use.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Method {
    /// `GET`.
    Get,
    /// `HEAD`: the answer has no body.
    Head,
    /// `POST`.
    Post,
    /// `PUT`.
    Put,
    /// `DELETE`.
    Delete,
}

impl Method {
    /// The method's name on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            Method::Get => "GET",
            Method::Head => "HEAD",
            Method::Post => "POST",
            Method::Put => "PUT",
            Method::Delete => "DELETE",
        }
    }

    fn http(self) -> ureq::http::Method {
        use ureq::http::Method as M;
        match self {
            Method::Get => M::GET,
            Method::Head => M::HEAD,
            Method::Post => M::POST,
            Method::Put => M::PUT,
            Method::Delete => M::DELETE,
        }
    }
}

/// One request, borrowed whole from the caller. Its `Debug` shows no header value, no body and no query: they
/// may hold a token or a SAS signature.
#[derive(Clone, Copy)]
pub struct Request<'a> {
    /// The method.
    pub method: Method,
    /// `https://host[:port]/path[?query]`; plain `http://` only as the transport's rules allow.
    pub url: &'a str,
    /// Request headers, sent in order. `Content-Length` is the transport's.
    pub headers: &'a [(&'a str, &'a str)],
    /// The body: sent with its length for `POST` and `PUT` even when empty, and for other methods when not
    /// empty.
    pub body: &'a [u8],
    /// Response headers to keep, by name (any case), at most [`MAX_KEPT_HEADERS`]: e.g. `ETag`,
    /// `x-ms-request-id`, `Location`. `Retry-After` is always kept.
    pub response_headers: &'a [&'a str],
    /// A bound on the whole request (connection, sending, the answer), on top of the configured per-phase
    /// timeouts: what a caller's own deadline leaves. `None`: the per-phase timeouts only.
    pub timeout: Option<Duration>,
}

impl std::fmt::Debug for Request<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let url = self.url.split(['?', '#']).next().unwrap_or("");
        f.debug_struct("Request")
            .field("method", &self.method)
            .field("url", &url)
            .field(
                "headers",
                &self.headers.iter().map(|(k, _)| *k).collect::<Vec<_>>(),
            )
            .field("body_len", &self.body.len())
            .field("response_headers", &self.response_headers)
            .finish()
    }
}

/// The response headers a request asked for, in a fixed-size buffer: what does not fit is left out and marked.
#[derive(Clone)]
pub struct KeptHeaders {
    buf: [u8; KEPT_HEADER_BYTES],
    used: u16,
    /// Per kept header: where its name starts, its name's length, its value's length (the value follows the name).
    slots: [(u16, u16, u16); MAX_KEPT_HEADERS],
    count: u8,
    /// A header that was asked for came back but is not kept: too long for the room left, not visible ASCII,
    /// or asked for beyond [`MAX_KEPT_HEADERS`].
    pub incomplete: bool,
}

impl Default for KeptHeaders {
    fn default() -> Self {
        KeptHeaders {
            buf: [0; KEPT_HEADER_BYTES],
            used: 0,
            slots: [(0, 0, 0); MAX_KEPT_HEADERS],
            count: 0,
            incomplete: false,
        }
    }
}

impl KeptHeaders {
    /// The value of header `name` (any case), when it was asked for, came back and was kept.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v)
    }

    /// The kept headers, as `(name as asked for, value)`.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> {
        self.slots[..self.count as usize].iter().map(|&(at, n, v)| {
            let (at, n, v) = (at as usize, n as usize, v as usize);
            // Both were pushed from `&str`: the buffer holds whole UTF-8 at these bounds.
            let text = |r: std::ops::Range<usize>| std::str::from_utf8(&self.buf[r]).unwrap_or("");
            (text(at..at + n), text(at + n..at + n + v))
        })
    }

    fn push(&mut self, name: &str, value: &str) {
        let at = self.used as usize;
        let end = at + name.len() + value.len();
        if self.count as usize == MAX_KEPT_HEADERS || end > KEPT_HEADER_BYTES {
            self.incomplete = true;
            return;
        }
        self.buf[at..at + name.len()].copy_from_slice(name.as_bytes());
        self.buf[at + name.len()..end].copy_from_slice(value.as_bytes());
        // Every bound is below KEPT_HEADER_BYTES, which fits in a u16.
        self.slots[self.count as usize] = (at as u16, name.len() as u16, value.len() as u16);
        self.count += 1;
        self.used = end as u16;
    }
}

impl std::fmt::Debug for KeptHeaders {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_map().entries(self.iter()).finish()?;
        if self.incomplete {
            f.write_str(" (incomplete)")?;
        }
        Ok(())
    }
}

/// An answer, of any status.
#[derive(Clone, Debug)]
pub struct Response {
    /// HTTP status.
    pub status: u16,
    /// `Retry-After`, if present and short.
    pub retry_after: Option<heapless::String<64>>,
    /// Bytes of the body copied into the caller's buffer (the rest is discarded).
    pub body_len: usize,
    /// The headers [`Request::response_headers`] asked for.
    pub headers: KeptHeaders,
}

impl Response {
    /// A kept response header by name: `KeptHeaders::get`.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name)
    }
}

/// One HTTP header, borrowed, as `Transport::post` takes them.
pub type Header<'a> = (&'static str, &'a str);

/// What `Transport::post` hands back: a [`Response`] without the kept headers.
pub struct RawResponse {
    /// HTTP status.
    pub status: u16,
    /// `Retry-After`, if present and short.
    pub retry_after: Option<heapless::String<64>>,
    /// Bytes of the body copied into the caller's buffer (the rest is discarded).
    pub body_len: usize,
}

/// The HTTP side of a client.
pub struct Transport {
    agent: ureq::Agent,
    route: Route,
    allow_plain: bool,
    allow_plain_remote: bool,
}

/// Which way requests to the cluster go, so that a failure names the host or proxy that failed instead of always
/// blaming the cluster.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Route {
    /// The cluster's host name or IP literal, as in the URL.
    pub host: String,
    /// `host[:port]` of the cluster, for messages about a tunnel to it.
    pub target: String,
    /// The HTTP CONNECT proxy the cluster is reached through, when one applies (not excluded by `no_proxy`).
    pub proxy: Option<ProxyRoute>,
}

/// An HTTP CONNECT proxy on the way to the cluster. Never holds its credentials.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProxyRoute {
    /// The proxy's host name or IP literal.
    pub host: String,
    /// The proxy's port.
    pub port: u16,
    /// Where the proxy was configured: `proxy.url` or `HTTPS_PROXY`, the place an operator fixes it.
    pub setting: &'static str,
}

impl ProxyRoute {
    /// `host:port`, as messages name the proxy.
    pub fn addr(&self) -> String {
        format!("{}:{}", self.host, self.port)
    }
}

impl Route {
    /// The route to `cluster` through `proxy`, if the proxy applies to the cluster's host.
    pub fn new(cluster: &crate::wire::ClusterUrl, proxy: Option<&ureq::Proxy>) -> Route {
        let target = match cluster.port {
            Some(p) => format!("{}:{p}", cluster.host),
            None => cluster.host.clone(),
        };
        let applies = |p: &ureq::Proxy| {
            cluster
                .base()
                .parse::<ureq::http::Uri>()
                .map(|uri| !p.is_no_proxy(&uri))
                .unwrap_or(true)
        };
        let proxy = proxy.filter(|p| applies(p)).map(|p| ProxyRoute {
            host: p.host().to_owned(),
            port: p.port(),
            setting: if p.is_from_env() {
                "HTTPS_PROXY"
            } else {
                "proxy.url"
            },
        });
        Route {
            host: cluster.host.clone(),
            target,
            proxy,
        }
    }
}

/// How long a looked-up address is used before the name is looked up again: long enough that a client sending
/// every few milliseconds does not ask the system resolver for every request, short enough that a cluster that
/// moves is followed within half a minute.
pub const RESOLVE_TTL: Duration = Duration::from_secs(30);
/// Host names whose addresses are kept: the cluster, the token endpoint, and in queued mode the DM and storage.
const RESOLVE_ENTRIES: usize = 4;
/// Addresses kept per host name (of the up to 16 a lookup gives): the connector tries them in order.
const RESOLVE_ADDRS: usize = 4;

/// ureq asks its resolver for every request, even one that then goes out on a kept-alive connection; for a
/// name like `localhost` that is nsswitch.conf, resolv.conf and /etc/hosts read again each time (README
/// "Benchmarks"). This one keeps the answers for [`RESOLVE_TTL`], a few hosts of a few addresses each (under
/// 1 KiB), and looks a name up synchronously: bounded by the system resolver's own `timeout:`/`attempts:`
/// (resolv.conf), never by a thread per lookup, which is what ureq's own resolver starts when a request has an
/// overall deadline.
#[derive(Debug)]
struct CachingResolver {
    ttl: Duration,
    entries: Mutex<heapless::Vec<Resolved, RESOLVE_ENTRIES>>,
    #[cfg(test)]
    lookups: std::sync::atomic::AtomicU32,
}

#[derive(Debug)]
struct Resolved {
    host: String,
    port: u16,
    family: ureq::config::IpFamily,
    addrs: heapless::Vec<SocketAddr, RESOLVE_ADDRS>,
    at: Instant,
}

impl CachingResolver {
    fn new(ttl: Duration) -> Self {
        CachingResolver {
            ttl,
            entries: Mutex::new(heapless::Vec::new()),
            #[cfg(test)]
            lookups: std::sync::atomic::AtomicU32::new(0),
        }
    }

    fn entries(&self) -> std::sync::MutexGuard<'_, heapless::Vec<Resolved, RESOLVE_ENTRIES>> {
        // The list is valid whatever a panicking holder did: each entry is replaced whole.
        self.entries.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl Resolver for CachingResolver {
    fn resolve(
        &self,
        uri: &ureq::http::Uri,
        config: &ureq::config::Config,
        _timeout: NextTimeout,
    ) -> Result<ResolvedSocketAddrs, ureq::Error> {
        let key = uri.authority().and_then(|a| {
            let port = a.port_u16().or(match uri.scheme_str() {
                Some("https") => Some(443),
                Some("http") => Some(80),
                _ => None,
            })?;
            Some((a.host(), port))
        });
        // Anything unusual (no host, an unknown scheme) goes to ureq's resolver for its own error.
        let Some((host, port)) = key else {
            return DefaultResolver::default().resolve(uri, config, NextTimeout::default());
        };
        let family = config.ip_family();
        let now = Instant::now();
        let mut out = self.empty();
        {
            let entries = self.entries();
            if let Some(e) = entries.iter().find(|e| {
                e.host == host
                    && e.port == port
                    && e.family == family
                    && now.duration_since(e.at) < self.ttl
            }) {
                e.addrs.iter().for_each(|a| out.push(*a));
                return Ok(out);
            }
        }
        #[cfg(test)]
        self.lookups
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        // No deadline given: a synchronous lookup on this thread.
        let found = DefaultResolver::default().resolve(uri, config, NextTimeout::default())?;
        let mut addrs = heapless::Vec::new();
        for a in found.iter().take(RESOLVE_ADDRS) {
            let _ = addrs.push(*a);
        }
        let mut entries = self.entries();
        entries.retain(|e| !(e.host == host && e.port == port && e.family == family));
        if entries.is_full() {
            // The oldest answer goes.
            if let Some(oldest) = (0..entries.len()).min_by_key(|&i| entries[i].at) {
                entries.swap_remove(oldest);
            }
        }
        // What every later request gets, so the first one too.
        addrs.iter().for_each(|a| out.push(*a));
        let _ = entries.push(Resolved {
            host: host.to_owned(),
            port,
            family,
            addrs,
            at: now,
        });
        Ok(out)
    }
}

impl Transport {
    /// Builds the agent: trust store, timeouts, no redirects, the proxy from `proxy.url` or `HTTPS_PROXY`/`NO_PROXY`.
    /// DNS is left to the system resolver's own bounds (`timeout:`/`attempts:` in resolv.conf): a resolve timeout
    /// in ureq would start a thread per lookup, and this library starts no threads. Looked-up addresses are kept
    /// for [`RESOLVE_TTL`] ([`CachingResolver`]).
    pub fn new(
        cfg: &TransportConfig<'_>,
        cluster: &crate::wire::ClusterUrl,
    ) -> Result<Transport, Error> {
        // A proxy from the environment is for the outside world: a loopback endpoint (tests, a local agent) is
        // reached directly. An explicit proxy.url applies to everything.
        let proxy = cfg
            .proxy
            .proxy()?
            .filter(|p| !(p.is_from_env() && cluster.is_loopback()));
        let roots = crate::certs::trust_anchors(cfg.bundled_roots, cfg.ca_pem)?;
        let tls = TlsConfig::builder()
            .provider(TlsProvider::Rustls)
            .unversioned_rustls_crypto_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .root_certs(RootCerts::new_with_certs(&roots))
            .build();
        let config = ureq::Agent::config_builder()
            .tls_config(tls)
            .http_status_as_error(false)
            .https_only(false)
            .proxy(proxy)
            .max_redirects(0)
            .max_redirects_will_error(false)
            .user_agent(ureq::config::AutoHeaderValue::None)
            .accept_encoding(ureq::config::AutoHeaderValue::None)
            .timeout_connect(Some(cfg.connect_timeout))
            .timeout_send_request(Some(cfg.send_timeout))
            .timeout_send_body(Some(cfg.send_timeout))
            .timeout_recv_response(Some(cfg.recv_timeout))
            .timeout_recv_body(Some(cfg.recv_timeout))
            // ureq's defaults (128 KiB each way) are sized for servers; a request head and a Kusto answer
            // need far less, and TLS records are 16 KiB anyway.
            .input_buffer_size(INPUT_BUFFER_BYTES)
            .output_buffer_size(OUTPUT_BUFFER_BYTES)
            .max_response_header_size(INPUT_BUFFER_BYTES)
            .max_idle_connections(2)
            .max_idle_connections_per_host(1)
            .max_idle_age(Duration::from_secs(50))
            .build();
        let agent = ureq::Agent::with_parts(
            config,
            DefaultConnector::default(),
            CachingResolver::new(RESOLVE_TTL),
        );
        let route = Route::new(cluster, agent.config().proxy());
        Ok(Transport {
            agent,
            route,
            allow_plain: cfg.allow_plain,
            allow_plain_remote: cfg.allow_plain_remote,
        })
    }

    /// Which way requests go: the cluster's host and the proxy in between, if any.
    pub fn route(&self) -> &Route {
        &self.route
    }

    /// The agent, shared with the token providers so that proxy, trust store and timeouts are the same.
    pub fn agent(&self) -> &ureq::Agent {
        &self.agent
    }

    /// Sends `req`; on an answer of any status, copies up to `body_out.len()` bytes of its body into `body_out`
    /// and keeps the response headers the request asked for. The rest of a longer body is not read: the connection
    /// is then closed rather than reused.
    // An error is a fixed-size value on purpose: handling one must not allocate.
    #[allow(clippy::result_large_err)]
    pub fn send(&self, req: &Request<'_>, body_out: &mut [u8]) -> Result<Response, TransportError> {
        self.check(req)?;
        let mut head = ureq::http::Request::builder()
            .method(req.method.http())
            .uri(req.url);
        for (k, v) in req.headers {
            head = head.header(*k, *v);
        }
        // A GET, HEAD or DELETE without a body goes without Content-Length; POST and PUT always carry it.
        let sent = if matches!(req.method, Method::Post | Method::Put) || !req.body.is_empty() {
            head.body(req.body).map(|r| self.run(r, req.timeout))
        } else {
            head.body(()).map(|r| self.run(r, req.timeout))
        };
        let mut resp = match sent {
            Ok(Ok(resp)) => resp,
            Ok(Err(e)) => return Err(TransportError::from_ureq(&e)),
            Err(e) => return Err(TransportError::from_ureq(&ureq::Error::Http(e))),
        };
        let status = resp.status().as_u16();
        let text = |name: &str| resp.headers().get(name).and_then(|v| v.to_str().ok());
        let retry_after = text("retry-after").and_then(|v| heapless::String::try_from(v).ok());
        let mut headers = KeptHeaders::default();
        for (i, name) in req.response_headers.iter().enumerate() {
            match (resp.headers().get(*name), i < MAX_KEPT_HEADERS) {
                (None, _) => {}
                (Some(v), true) => match v.to_str() {
                    Ok(v) => headers.push(name, v),
                    Err(_) => headers.incomplete = true,
                },
                (Some(_), false) => headers.incomplete = true,
            }
        }
        let n = body::read_into(&mut resp.body_mut().as_reader(), body_out).len;
        Ok(Response {
            status,
            retry_after,
            body_len: n,
            headers,
        })
    }

    /// Runs a request, bounded as a whole by `timeout` when given.
    fn run<S: ureq::AsSendBody>(
        &self,
        r: ureq::http::Request<S>,
        timeout: Option<Duration>,
    ) -> Result<ureq::http::Response<ureq::Body>, ureq::Error> {
        match timeout {
            None => self.agent.run(r),
            Some(t) => {
                let r = self
                    .agent
                    .configure_request(r)
                    .timeout_global(Some(t.max(Duration::from_millis(1))))
                    .build();
                self.agent.run(r)
            }
        }
    }

    /// The rules a URL must pass before anything is sent: `http(s)://host[:port]/...` without `user:password@`;
    /// plain http only with `allow_plain`, to loopback unless `allow_plain_remote`, and never with an
    /// `Authorization` header beyond loopback.
    #[allow(clippy::result_large_err)]
    fn check(&self, req: &Request<'_>) -> Result<(), TransportError> {
        use TransportErrorKind as K;
        let Some((https, host)) = split_url(req.url) else {
            return Err(TransportError::new(
                K::BadRequest,
                "the URL is not http(s)://host[:port]/path, or it holds user:password@",
            ));
        };
        if https {
            return Ok(());
        }
        let loopback = crate::wire::is_loopback_host(host);
        if !self.allow_plain || !(loopback || self.allow_plain_remote) {
            return Err(TransportError::new(
                K::InsecureUrl,
                if loopback {
                    "plain http is not allowed: use https, or allow plain http for loopback hosts (http.allow_plain)"
                } else {
                    "plain http to a host that is not loopback is not allowed: use https"
                },
            ));
        }
        if !loopback
            && req
                .headers
                .iter()
                .any(|(k, _)| k.eq_ignore_ascii_case("authorization"))
        {
            return Err(TransportError::new(
                K::InsecureUrl,
                "an Authorization header never travels over plain http to a host that is not loopback",
            ));
        }
        Ok(())
    }
}

/// The host of an `http(s)://host[:port]/...` URL, brackets of IPv6 literals removed, and whether it is https.
/// `None` for another scheme, an empty host, or `user:password@` (which would be sent to whoever reads logs).
pub fn split_url(url: &str) -> Option<(bool, &str)> {
    let lower = url
        .get(..8)
        .map(|s| s.to_ascii_lowercase())
        .unwrap_or_default();
    let (https, rest) = if lower.starts_with("https://") {
        (true, &url[8..])
    } else if lower.starts_with("http://") {
        (false, &url[7..])
    } else {
        return None;
    };
    let authority = &rest[..rest.find(['/', '?', '#']).unwrap_or(rest.len())];
    if authority.contains('@') || authority.is_empty() {
        return None;
    }
    let host = if let Some(v6) = authority.strip_prefix('[') {
        &v6[..v6.find(']')?]
    } else {
        authority.split(':').next()?
    };
    (!host.is_empty()).then_some((https, host))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::ClusterUrl;
    use test_server::serve;

    /// A transport to a loopback test server over plain http, with no proxy whatever HTTPS_PROXY says.
    fn plain(base: &str) -> Transport {
        static NO_PROXY: std::sync::OnceLock<ProxyConfig> = std::sync::OnceLock::new();
        let proxy = NO_PROXY.get_or_init(|| {
            let mut p = ProxyConfig::new();
            p.set("proxy.url", "none").unwrap();
            p
        });
        let cfg = TransportConfig {
            allow_plain: true,
            proxy,
            ..TransportConfig::default()
        };
        Transport::new(&cfg, &ClusterUrl::parse(base).unwrap()).unwrap()
    }

    fn request<'a>(method: Method, url: &'a str, body: &'a [u8]) -> Request<'a> {
        Request {
            method,
            url,
            headers: &[],
            body,
            response_headers: &[],
            timeout: None,
        }
    }

    #[test]
    fn a_proxy_excluded_by_no_proxy_is_not_on_the_route() {
        let mut p = ProxyConfig::default();
        p.set("proxy.url", "http://proxy.plant.local:3128").unwrap();
        p.set("proxy.no_proxy", ".windows.net").unwrap();
        let cfg = TransportConfig {
            proxy: &p,
            ..TransportConfig::default()
        };
        let c = ClusterUrl::parse("https://mycluster.westeurope.kusto.windows.net").unwrap();
        assert_eq!(Transport::new(&cfg, &c).unwrap().route().proxy, None);
        let c = ClusterUrl::parse("https://mycluster.example.com:8443").unwrap();
        let t = Transport::new(&cfg, &c).unwrap();
        assert_eq!(t.route().target, "mycluster.example.com:8443");
        assert_eq!(
            t.route().proxy.as_ref().unwrap().addr(),
            "proxy.plant.local:3128"
        );
    }

    #[test]
    fn every_method_goes_out_as_asked_with_a_body_only_where_it_belongs() {
        let (base, server) = serve(vec![
            (200, vec![], "got".into()),
            (200, vec![], String::new()),
            (201, vec![], String::new()),
            (202, vec![], String::new()),
            (204, vec![], String::new()),
            (200, vec![], String::new()),
        ]);
        let t = plain(&base);
        let url = format!("{base}/c/b?comp=list");
        let mut buf = [0u8; 64];
        let cases: [(Method, &[u8], u16); 6] = [
            (Method::Get, b"", 200),
            (Method::Head, b"", 200),
            (Method::Put, b"blob", 201),
            (Method::Post, b"", 202),
            (Method::Delete, b"", 204),
            (Method::Delete, b"why", 200),
        ];
        for (m, body, status) in cases {
            let r = t
                .send(&request(m, &url, body), &mut buf)
                .unwrap_or_else(|e| panic!("{m:?}: {e}"));
            assert_eq!(r.status, status, "{m:?}");
            if m == Method::Get {
                assert_eq!(&buf[..r.body_len], b"got");
            } else {
                assert_eq!(r.body_len, 0, "{m:?}");
            }
        }
        let seen = server.join().unwrap();
        let has_length = |i: usize| seen[i].to_ascii_lowercase().contains("\r\ncontent-length:");
        assert!(
            seen[0].starts_with("GET /c/b?comp=list HTTP/1.1\r\n") && !has_length(0),
            "{}",
            seen[0]
        );
        assert!(
            seen[1].starts_with("HEAD /c/b?comp=list ") && !has_length(1),
            "{}",
            seen[1]
        );
        assert!(
            seen[2].starts_with("PUT ") && seen[2].ends_with("\r\n\r\nblob"),
            "{}",
            seen[2]
        );
        assert!(
            seen[2]
                .to_ascii_lowercase()
                .contains("\r\ncontent-length: 4\r\n"),
            "{}",
            seen[2]
        );
        // An empty POST still says so (Azure storage's Clear Messages, a zero-length blob).
        assert!(
            seen[3].starts_with("POST ")
                && seen[3]
                    .to_ascii_lowercase()
                    .contains("\r\ncontent-length: 0\r\n"),
            "{}",
            seen[3]
        );
        assert!(
            seen[4].starts_with("DELETE ") && !has_length(4),
            "{}",
            seen[4]
        );
        assert!(
            seen[5].starts_with("DELETE ") && seen[5].ends_with("\r\n\r\nwhy"),
            "{}",
            seen[5]
        );
    }

    #[test]
    fn the_headers_asked_for_are_kept_and_nothing_else() {
        let long = "L".repeat(KEPT_HEADER_BYTES);
        let (base, server) = serve(vec![
            (
                201,
                vec![
                    ("ETag", "\"0x8D9\"".into()),
                    ("x-ms-request-id", "5f2a-01".into()),
                    ("Retry-After", "12".into()),
                    ("x-ms-other", "not asked".into()),
                ],
                "body".into(),
            ),
            (
                200,
                vec![("Location", long.clone()), ("ETag", "e".into())],
                String::new(),
            ),
        ]);
        let t = plain(&base);
        let url = format!("{base}/q/messages");
        let mut buf = [0u8; 2];
        let req = Request {
            headers: &[
                ("x-ms-version", "2021-08-06"),
                ("Content-Type", "application/xml"),
            ],
            response_headers: &["etag", "X-MS-Request-Id", "Location"],
            ..request(Method::Put, &url, b"<QueueMessage/>")
        };
        let r = t.send(&req, &mut buf).unwrap();
        assert_eq!(r.status, 201);
        assert_eq!(r.retry_after.as_deref(), Some("12"));
        assert_eq!(r.header("ETag"), Some("\"0x8D9\""));
        assert_eq!(r.header("x-ms-request-id"), Some("5f2a-01"));
        assert_eq!(r.header("location"), None);
        assert_eq!(r.header("x-ms-other"), None);
        assert!(!r.headers.incomplete);
        // The body is bounded by the buffer.
        assert_eq!((r.body_len, &buf), (2, b"bo"));
        assert_eq!(
            r.headers.iter().collect::<Vec<_>>(),
            [("etag", "\"0x8D9\""), ("X-MS-Request-Id", "5f2a-01")]
        );
        // What does not fit is left out and marked; what fits is still kept.
        let r = t.send(&req, &mut buf).unwrap();
        assert_eq!(r.header("location"), None);
        assert_eq!(r.header("etag"), Some("e"));
        assert!(r.headers.incomplete);
        let seen = server.join().unwrap();
        assert!(
            seen[0].contains("\r\nx-ms-version: 2021-08-06\r\n"),
            "{}",
            seen[0]
        );
        assert!(
            seen[0].contains("\r\ncontent-type: application/xml\r\n"),
            "{}",
            seen[0]
        );
        drop(long);
    }

    #[test]
    fn kept_headers_are_bounded_in_count_and_bytes() {
        let mut k = KeptHeaders::default();
        for i in 0..MAX_KEPT_HEADERS {
            k.push(["a", "b", "c", "d"][i], "v");
        }
        assert!(!k.incomplete);
        k.push("e", "v");
        assert!(k.incomplete && k.get("e").is_none() && k.get("D") == Some("v"));
        let mut k = KeptHeaders::default();
        k.push("n", &"x".repeat(KEPT_HEADER_BYTES - 1));
        assert_eq!(k.get("n").map(str::len), Some(KEPT_HEADER_BYTES - 1));
        k.push("m", "");
        assert!(k.incomplete && k.get("m").is_none());
        assert!(format!("{k:?}").ends_with("(incomplete)"));
    }

    #[test]
    fn urls_outside_the_rules_are_refused_before_anything_is_sent() {
        // Nothing listens: a refused URL must fail with its own kind, not with a connection error.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let local = format!("http://127.0.0.1:{port}");
        let mut buf = [0u8; 8];
        let kind = |t: &Transport, url: &str, headers: &[(&str, &str)]| {
            let mut buf = [0u8; 8];
            let req = Request {
                headers,
                ..request(Method::Get, url, b"")
            };
            t.send(&req, &mut buf).map(|r| r.status).map_err(|e| e.kind)
        };
        use TransportErrorKind as K;
        let https_only = Transport::new(
            &TransportConfig::default(),
            &ClusterUrl::parse("https://c.kusto.windows.net").unwrap(),
        )
        .unwrap();
        assert_eq!(kind(&https_only, &local, &[]), Err(K::InsecureUrl));
        assert_eq!(
            kind(&https_only, "http://example.com/x", &[]),
            Err(K::InsecureUrl)
        );
        for bad in [
            "ftp://h/x",
            "https://",
            "https://user:pw@h/x",
            "example.com/x",
        ] {
            let e = https_only
                .send(&request(Method::Get, bad, b""), &mut buf)
                .unwrap_err();
            assert_eq!(e.kind, K::BadRequest, "{bad}");
            assert!(!e.to_string().contains("pw"), "{e}");
        }
        let t = plain(&local);
        assert_eq!(
            kind(&t, &local, &[("Authorization", "Bearer x")]),
            Err(K::ConnectionRefused)
        );
        assert_eq!(kind(&t, "http://example.com/x", &[]), Err(K::InsecureUrl));
        let mut p = ProxyConfig::new();
        p.set("proxy.url", "none").unwrap();
        let remote = Transport::new(
            &TransportConfig {
                allow_plain: true,
                allow_plain_remote: true,
                proxy: &p,
                ..TransportConfig::default()
            },
            &ClusterUrl::parse(&local).unwrap(),
        )
        .unwrap();
        // A credential never travels in the clear beyond loopback, whatever the rules allow.
        let e = remote
            .send(
                &Request {
                    headers: &[("authorization", "Bearer x")],
                    ..request(Method::Post, "http://192.0.2.1/x", b"")
                },
                &mut buf,
            )
            .unwrap_err();
        assert_eq!(e.kind, K::InsecureUrl);
        assert!(e.to_string().contains("Authorization"), "{e}");
        // `x.localhost` is a DNS name, not loopback: no token goes there in clear text, whatever the rules allow,
        // and with plain http for loopback only nothing goes there at all.
        for t in [&remote, &t] {
            let e = t
                .send(
                    &Request {
                        headers: &[("Authorization", "Bearer x")],
                        ..request(
                            Method::Post,
                            "http://x.localhost:8080/v1/rest/ingest/db/t",
                            b"",
                        )
                    },
                    &mut buf,
                )
                .unwrap_err();
            assert_eq!(e.kind, K::InsecureUrl, "{e}");
        }
        // A malformed header is the request's fault, and says nothing of its value.
        let e = t
            .send(
                &Request {
                    headers: &[("x-ms-meta", "bad\nvalue")],
                    ..request(Method::Get, &local, b"")
                },
                &mut buf,
            )
            .unwrap_err();
        assert_eq!(e.kind, K::BadRequest, "{e}");
        assert!(!e.to_string().contains("bad"), "{e}");
    }

    #[test]
    fn a_request_shows_no_secret() {
        let r = Request {
            headers: &[("Authorization", "Bearer s3cr3t")],
            ..request(
                Method::Put,
                "https://a.blob.core.windows.net/c/b?sig=s3cr3t",
                b"s3cr3t",
            )
        };
        let d = format!("{r:?}");
        assert!(!d.contains("s3cr3t"), "{d}");
        assert!(
            d.contains("https://a.blob.core.windows.net/c/b") && d.contains("Authorization"),
            "{d}"
        );
    }

    #[test]
    fn a_looked_up_name_is_kept_for_the_ttl_per_host_and_port_and_few_are_kept() {
        let config = ureq::Agent::config_builder().build();
        let lookups = |r: &CachingResolver| r.lookups.load(std::sync::atomic::Ordering::Relaxed);
        let resolve = |r: &CachingResolver, url: &str| {
            let uri: ureq::http::Uri = url.parse().unwrap();
            r.resolve(&uri, &config, NextTimeout::default())
                .unwrap()
                .iter()
                .copied()
                .collect::<Vec<_>>()
        };
        let r = CachingResolver::new(RESOLVE_TTL);
        let first = resolve(&r, "http://localhost:8080/v1/rest/ingest/db/t");
        assert!(
            !first.is_empty()
                && first
                    .iter()
                    .all(|a| a.port() == 8080 && a.ip().is_loopback())
        );
        assert_eq!(resolve(&r, "http://localhost:8080/other"), first);
        assert_eq!(lookups(&r), 1, "the second request used the kept answer");
        // Another port or scheme is another entry; a literal address too.
        let https = resolve(&r, "https://localhost/");
        assert!(https.iter().all(|a| a.port() == 443));
        resolve(&r, "http://127.0.0.1:9/");
        assert_eq!(lookups(&r), 3);
        // At most RESOLVE_ENTRIES names are kept: the oldest goes first.
        for port in 1..=RESOLVE_ENTRIES as u16 {
            resolve(&r, &format!("http://localhost:{port}/"));
        }
        assert_eq!(r.entries().len(), RESOLVE_ENTRIES);
        resolve(&r, "http://localhost:8080/");
        assert_eq!(lookups(&r), 4 + RESOLVE_ENTRIES as u32, "8080 was evicted");
        // Past the TTL a name is looked up again.
        let expired = CachingResolver::new(Duration::ZERO);
        resolve(&expired, "http://localhost:8080/");
        resolve(&expired, "http://localhost:8080/");
        assert_eq!(lookups(&expired), 2);
        // A name that does not resolve is an error, and nothing is kept for it.
        let uri: ureq::http::Uri = "http://no-such-host.invalid/".parse().unwrap();
        assert!(expired
            .resolve(&uri, &config, NextTimeout::default())
            .is_err());
        assert!(expired
            .entries()
            .iter()
            .all(|e| e.host != "no-such-host.invalid"));
    }

    #[test]
    fn split_url_finds_scheme_and_host() {
        assert_eq!(
            split_url("https://h.example:443/p?q"),
            Some((true, "h.example"))
        );
        assert_eq!(split_url("HTTP://[::1]:8080/x"), Some((false, "::1")));
        assert_eq!(split_url("http://h?x"), Some((false, "h")));
        for bad in ["ftp://h", "https://", "http://u:p@h/", "http://:80/", "h/x"] {
            assert_eq!(split_url(bad), None, "{bad}");
        }
    }
}
