//! HTTP over TLS: one `ureq` agent per client with keep-alive, rustls with ring, verification always on, and every
//! phase bounded by the configured timeouts. It sends a prepared request and hands back the status, `Retry-After`
//! and a bounded prefix of the body; what they mean is `response`'s business.

use std::fmt::Write as _;
use std::io::Read;
use std::sync::Arc;
use std::time::Duration;

use ureq::tls::{RootCerts, TlsConfig, TlsProvider};

mod proxy;

pub use proxy::ProxyConfig;

use crate::config::RESPONSE_BODY_BYTES;
use crate::error::Error;
use crate::response::{Failure, FailureClass};

/// HTTP read buffer per connection: holds the response head.
pub const INPUT_BUFFER_BYTES: usize = 16 * 1024;
/// HTTP write buffer per connection: the request head and body pieces.
pub const OUTPUT_BUFFER_BYTES: usize = 16 * 1024;

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

/// One HTTP header, borrowed.
pub type Header<'a> = (&'static str, &'a str);

/// What came back from the server.
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

impl Transport {
    /// Builds the agent: trust store, timeouts, no redirects, the proxy from `proxy.url` or `HTTPS_PROXY`/`NO_PROXY`.
    /// DNS is left to the system resolver's own bounds (`timeout:`/`attempts:` in resolv.conf): a resolve timeout
    /// in ureq would start a thread per lookup, and this library starts no threads.
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
        let agent = ureq::Agent::config_builder()
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
            .build()
            .new_agent();
        let route = Route::new(cluster, agent.config().proxy());
        Ok(Transport { agent, route })
    }

    /// Which way requests go: the cluster's host and the proxy in between, if any.
    pub fn route(&self) -> &Route {
        &self.route
    }

    /// The agent, shared with the token providers so that proxy, trust store and timeouts are the same.
    pub fn agent(&self) -> &ureq::Agent {
        &self.agent
    }

    /// POSTs `body`; on an answer of any status, copies up to `body_buf.len()` bytes of its body.
    // A failure is a fixed-size value on purpose: handling one must not allocate.
    #[allow(clippy::result_large_err)]
    pub fn post(
        &self,
        url: &str,
        headers: &[Header<'_>],
        body: &[u8],
        body_buf: &mut [u8],
    ) -> Result<RawResponse, Failure> {
        let mut req = self.agent.post(url);
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        let mut resp = req
            .send(body)
            .map_err(|e| network_failure(&e, &self.route))?;
        let status = resp.status().as_u16();
        let retry_after = resp
            .headers()
            .get("retry-after")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| heapless::String::try_from(v).ok());
        let mut reader = resp.body_mut().as_reader();
        let mut n = 0;
        let limit = body_buf.len().min(RESPONSE_BODY_BYTES);
        while n < limit {
            match reader.read(&mut body_buf[n..limit]) {
                Ok(0) => break,
                Ok(k) => n += k,
                // The status is what counts; a body cut short only loses detail.
                Err(_) => break,
            }
        }
        Ok(RawResponse {
            status,
            retry_after,
            body_len: n,
        })
    }
}

/// The rustls error behind a ureq error, which arrives either directly or wrapped in an I/O error.
fn rustls_error(e: &ureq::Error) -> Option<&rustls::Error> {
    match e {
        ureq::Error::Rustls(r) => Some(r),
        ureq::Error::Io(io) => io
            .get_ref()
            .and_then(|inner| inner.downcast_ref::<rustls::Error>()),
        _ => None,
    }
}

/// What a failed name lookup says about itself.
#[derive(Debug, PartialEq, Eq)]
enum Lookup {
    /// The name does not exist (NXDOMAIN, no address): a configuration problem.
    NoSuchName,
    /// The resolver could not answer now (EAI_AGAIN): the network or the DNS server is away.
    TryAgain,
}

/// A DNS failure behind a ureq error. ureq reports an empty answer as `HostNotFound`, but a failing `getaddrinfo`
/// reaches it as the standard library's I/O error, whose kind is not public: its text is the only mark
/// ("failed to lookup address information: <gai_strerror>", glibc and musl alike).
fn lookup_failure(e: &ureq::Error) -> Option<Lookup> {
    match e {
        ureq::Error::HostNotFound => Some(Lookup::NoSuchName),
        ureq::Error::Io(io) => {
            let text = io.to_string().to_ascii_lowercase();
            if !text.starts_with("failed to lookup address information") {
                return None;
            }
            // "Temporary failure in name resolution" (EAI_AGAIN) on glibc and musl alike.
            if text.contains("temporary failure") || text.contains("try again") {
                Some(Lookup::TryAgain)
            } else {
                Some(Lookup::NoSuchName)
            }
        }
        _ => None,
    }
}

/// Why a certificate was refused, in words that say what to change.
fn certificate_problem(c: &rustls::CertificateError, route: &Route) -> String {
    use rustls::CertificateError as C;
    let inspected = if route.proxy.is_some() {
        " (a proxy that inspects TLS signs with its own CA: give that one)"
    } else {
        ""
    };
    match c {
        C::UnknownIssuer => format!(
            "the server's TLS certificate is not trusted (unknown issuer): set tls.ca_file to the CA that signed it{inspected}"
        ),
        C::Expired | C::ExpiredContext { .. } => "the server's TLS certificate has expired: renew it on the server, or check this device's clock".to_owned(),
        // Devices without a battery-backed clock boot in 1970 until NTP has run.
        C::NotValidYet | C::NotValidYetContext { .. } => "the server's TLS certificate is not valid yet: this device's clock is probably wrong; set it (NTP) and the data goes out".to_owned(),
        C::NotValidForName | C::NotValidForNameContext { .. } => format!(
            "the server's TLS certificate is not for '{}': check the host name in the cluster URL",
            route.host
        ),
        C::Revoked => "the server's TLS certificate is revoked: the server needs a new certificate".to_owned(),
        other => format!(
            "the server's TLS certificate is not accepted ({other:?}): set tls.ca_file to the CA that signed it, or fix the server's certificate{inspected}"
        ),
    }
}

/// A proxy's answer to CONNECT, as ureq words it: "proxy server responded 403/Forbidden".
fn proxy_status(reason: &str) -> Option<u16> {
    let rest = reason.split("responded ").nth(1)?;
    rest.split(|c: char| !c.is_ascii_digit())
        .next()?
        .parse()
        .ok()
}

/// Turns an error without an HTTP answer into a failure that names what failed (the cluster's host, the proxy,
/// the certificate) and how it is handled: a configuration problem (a name that does not exist, an untrusted
/// certificate, a proxy that forbids the tunnel) is `TargetNotReady` (kept, retried slowly, an operator fixes
/// it), a passing fault is `Transient`.
pub fn network_failure(e: &ureq::Error, route: &Route) -> Failure {
    let not_ready = |message: &str| {
        let mut f = Failure::network(message);
        f.class = FailureClass::TargetNotReady;
        f
    };
    match rustls_error(e) {
        // Not a passing fault: the trust store, the clock or the server's certificate must change.
        Some(rustls::Error::InvalidCertificate(c)) => {
            return not_ready(&certificate_problem(c, route))
        }
        // Plain HTTP (or something else) where TLS was expected: a wrong scheme or port, not a bad network.
        Some(rustls::Error::InvalidMessage(m)) => {
            return not_ready(&format!(
                "the server at '{}' did not answer in TLS ({m:?}): check the scheme (https) and port in the cluster URL",
                route.target
            ))
        }
        _ => {}
    }
    let via = route.proxy.as_ref();
    if let Some(lookup) = lookup_failure(e) {
        // Through a CONNECT proxy only the proxy's name is looked up here; the proxy resolves the cluster's.
        let (what, host, fix) = match via {
            Some(p) => (
                "proxy host name",
                p.host.as_str(),
                format!("check {}", p.setting),
            ),
            None => (
                "host name",
                route.host.as_str(),
                "check the cluster URL".to_owned(),
            ),
        };
        return match lookup {
            Lookup::NoSuchName => not_ready(&format!("{what} '{host}' does not resolve: {fix}")),
            Lookup::TryAgain => Failure::network(&format!(
                "{what} '{host}' could not be looked up now (temporary DNS failure): the network or the DNS server is not reachable"
            )),
        };
    }
    if let ureq::Error::ConnectProxyFailed(reason) = e {
        let (proxy, setting) = match via {
            Some(p) => (p.addr(), p.setting),
            None => ("(unknown)".to_owned(), "proxy.url"),
        };
        let head = format!(
            "proxy '{proxy}' refused the connection to '{}'",
            route.target
        );
        return match proxy_status(reason) {
            Some(407) => not_ready(&format!(
                "{head}: it wants credentials (407): put user:password in {setting}"
            )),
            // The proxy's view of the cluster (unreachable, unresolvable, overloaded) may change.
            Some(500..=599) => Failure::network(&format!(
                "{head} ({reason}): the proxy could not reach the cluster; check the cluster URL and the proxy's own network"
            )),
            Some(_) => not_ready(&format!(
                "{head} ({reason}): the proxy's rules must allow CONNECT to the cluster's host and port"
            )),
            None => Failure::network(&format!("{head} ({reason}): check {setting}")),
        };
    }
    let mut f = match e {
        ureq::Error::Io(io) => {
            use std::io::ErrorKind as K;
            match (io.kind(), via) {
                (K::ConnectionRefused, Some(p)) => Failure::network(&format!(
                    "proxy '{}' refused the connection: check {} and that the proxy runs",
                    p.addr(),
                    p.setting
                )),
                (K::ConnectionRefused, None) => {
                    Failure::network("connection refused: nothing listens at the cluster URL")
                }
                (
                    K::UnexpectedEof | K::ConnectionReset | K::ConnectionAborted | K::BrokenPipe,
                    _,
                ) => Failure::network("the connection was closed before the service answered"),
                (K::TimedOut | K::WouldBlock, _) => Failure::network("timed out"),
                _ => Failure::network(&format!("network error: {io}")),
            }
        }
        ureq::Error::Timeout(t) => Failure::network(&format!("timed out ({t})")),
        ureq::Error::ConnectionFailed => Failure::network("connection failed"),
        other => Failure::network(&format!("{other}")),
    };
    if f.message.is_empty() {
        f.message = heapless::String::try_from("network error").unwrap_or_default();
    }
    // Whoever reads the message must know the cluster was not reached directly.
    if let Some(p) = via {
        if !f.message.starts_with("proxy ") {
            let _ = write!(f.message, " (through proxy '{}')", p.addr());
        }
    }
    f
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::ClusterUrl;
    use std::io::{self, Write};
    use std::net::TcpListener;

    fn direct() -> Route {
        Route {
            host: "mycluster.westeurope.kusto.windows.net".into(),
            target: "mycluster.westeurope.kusto.windows.net".into(),
            proxy: None,
        }
    }

    fn proxied() -> Route {
        Route {
            proxy: Some(ProxyRoute {
                host: "proxy.plant.local".into(),
                port: 3128,
                setting: "proxy.url",
            }),
            ..direct()
        }
    }

    fn gai(detail: &str) -> ureq::Error {
        ureq::Error::Io(io::Error::other(format!(
            "failed to lookup address information: {detail}"
        )))
    }

    fn cert(c: rustls::CertificateError) -> ureq::Error {
        ureq::Error::Rustls(rustls::Error::InvalidCertificate(c))
    }

    /// A client transport with no proxy (whatever HTTPS_PROXY says) unless `proxy` names one.
    fn transport(url: &str, proxy: Option<&str>) -> Transport {
        let mut p = ProxyConfig::default();
        p.set("proxy.url", proxy.unwrap_or("none")).unwrap();
        let cfg = TransportConfig {
            connect_timeout: Duration::from_secs(5),
            proxy: &p,
            ..TransportConfig::default()
        };
        Transport::new(&cfg, &ClusterUrl::parse(url).unwrap()).unwrap()
    }

    fn post(t: &Transport, url: &str) -> Failure {
        let mut buf = [0u8; 256];
        match t.post(url, &[], b"x", &mut buf) {
            Err(f) => f,
            Ok(r) => panic!("expected no answer, got HTTP {}", r.status),
        }
    }

    #[test]
    fn a_host_name_that_does_not_resolve_is_a_configuration_problem() {
        let want = "host name 'mycluster.westeurope.kusto.windows.net' does not resolve: check the cluster URL";
        for e in [
            ureq::Error::HostNotFound,
            gai("Name or service not known"), // glibc
            gai("Name does not resolve"),     // musl
            gai("No address associated with hostname"),
        ] {
            let f = network_failure(&e, &direct());
            assert_eq!(f.class, FailureClass::TargetNotReady, "{e:?}");
            assert_eq!(f.message.as_str(), want, "{e:?}");
            assert_eq!(f.status, 0);
            assert!(!f.advice().contains("create the table"), "{}", f.advice());
        }
        // A resolver that cannot answer now is the network's trouble, not the URL's.
        let f = network_failure(&gai("Temporary failure in name resolution"), &direct());
        assert_eq!(f.class, FailureClass::Transient);
        assert!(f.message.contains("temporary DNS failure"), "{}", f.message);
        // Behind a CONNECT proxy only the proxy's own name is looked up here.
        let f = network_failure(&ureq::Error::HostNotFound, &proxied());
        assert_eq!(f.class, FailureClass::TargetNotReady);
        assert_eq!(
            f.message.as_str(),
            "proxy host name 'proxy.plant.local' does not resolve: check proxy.url"
        );
    }

    #[test]
    fn an_invalid_host_name_fails_fast_and_names_the_cluster_url() {
        // RFC 6761: .invalid never resolves, and resolvers answer it without asking the network.
        use std::net::ToSocketAddrs;
        let host = "kusto-edge-test.invalid";
        let t0 = std::time::Instant::now();
        if (host, 443).to_socket_addrs().is_ok() || t0.elapsed() > Duration::from_secs(5) {
            eprintln!(
                "this machine's resolver answers (or hangs on) {host}: skipping the real lookup"
            );
            return;
        }
        let url = format!("https://{host}");
        let t = transport(&url, None);
        let f = post(&t, &format!("{url}/v1/rest/ingest/db/T?streamFormat=csv"));
        assert_eq!(f.class, FailureClass::TargetNotReady, "{}", f.message);
        assert_eq!(
            f.message.as_str(),
            format!("host name '{host}' does not resolve: check the cluster URL")
        );
        // Through a proxy whose own name does not resolve, the proxy's setting is what to fix.
        let t = transport(&url, Some("http://kusto-edge-proxy.invalid:3128"));
        let f = post(&t, &format!("{url}/v1/rest/ingest/db/T?streamFormat=csv"));
        assert_eq!(f.class, FailureClass::TargetNotReady, "{}", f.message);
        assert_eq!(
            f.message.as_str(),
            "proxy host name 'kusto-edge-proxy.invalid' does not resolve: check proxy.url"
        );
    }

    #[test]
    fn a_proxy_that_refuses_is_named_not_the_cluster() {
        let f = network_failure(
            &ureq::Error::Io(io::Error::from(io::ErrorKind::ConnectionRefused)),
            &proxied(),
        );
        assert_eq!(f.class, FailureClass::Transient);
        assert!(
            f.message
                .starts_with("proxy 'proxy.plant.local:3128' refused the connection"),
            "{}",
            f.message
        );
        assert!(!f.message.contains("cluster URL"), "{}", f.message);
        // Without a proxy a refusal is the cluster's.
        let f = network_failure(
            &ureq::Error::Io(io::Error::from(io::ErrorKind::ConnectionRefused)),
            &direct(),
        );
        assert!(f.message.contains("cluster URL"), "{}", f.message);

        let refused = |reason: &str| {
            network_failure(&ureq::Error::ConnectProxyFailed(reason.into()), &proxied())
        };
        let f = refused("proxy server responded 403/Forbidden");
        assert_eq!(f.class, FailureClass::TargetNotReady);
        assert!(
            f.message.starts_with("proxy 'proxy.plant.local:3128' refused the connection to 'mycluster.westeurope.kusto.windows.net' (proxy server responded 403/Forbidden)"),
            "{}",
            f.message
        );
        let f = refused("proxy server responded 407/Proxy Authentication Required");
        assert_eq!(f.class, FailureClass::TargetNotReady);
        assert!(
            f.message.contains("put user:password in proxy.url"),
            "{}",
            f.message
        );
        let f = refused("proxy server responded 502/Bad Gateway");
        assert_eq!(f.class, FailureClass::Transient);
        assert!(f
            .message
            .starts_with("proxy 'proxy.plant.local:3128' refused the connection"));
        let f = refused("proxy server did not respond");
        assert_eq!(f.class, FailureClass::Transient);
        assert!(f
            .message
            .starts_with("proxy 'proxy.plant.local:3128' refused the connection"));
        // Other failures on the way say that a proxy was in between.
        let f = network_failure(
            &ureq::Error::Io(io::Error::from(io::ErrorKind::ConnectionReset)),
            &proxied(),
        );
        assert!(
            f.message
                .ends_with("(through proxy 'proxy.plant.local:3128')"),
            "{}",
            f.message
        );
    }

    #[test]
    fn a_real_proxy_that_refuses_or_forbids_connect_is_named() {
        // Nothing listens on a port that was just freed: the proxy refuses.
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let url = "https://kusto-edge-test.invalid";
        let ingest = format!("{url}/v1/rest/ingest/db/T?streamFormat=csv");
        let t = transport(url, Some(&format!("http://127.0.0.1:{port}")));
        assert_eq!(
            t.route().proxy.as_ref().map(|p| (p.addr(), p.setting)),
            Some((format!("127.0.0.1:{port}"), "proxy.url"))
        );
        let f = post(&t, &ingest);
        assert!(
            f.message
                .starts_with(&format!("proxy '127.0.0.1:{port}' refused the connection")),
            "{}",
            f.message
        );
        // A proxy whose rules forbid the tunnel answers CONNECT with 403.
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let proxy = std::thread::spawn(move || {
            let (mut s, _) = listener.accept().unwrap();
            let mut head = Vec::new();
            let mut b = [0u8; 1];
            while !head.ends_with(b"\r\n\r\n") && s.read(&mut b).unwrap_or(0) == 1 {
                head.push(b[0]);
            }
            let _ = s.write_all(b"HTTP/1.1 403 Forbidden\r\nContent-Length: 0\r\n\r\n");
            String::from_utf8_lossy(&head).into_owned()
        });
        let t = transport(url, Some(&format!("http://127.0.0.1:{port}")));
        let f = post(&t, &ingest);
        let head = proxy.join().unwrap();
        assert!(
            head.starts_with("CONNECT kusto-edge-test.invalid:443 "),
            "{head}"
        );
        assert_eq!(f.class, FailureClass::TargetNotReady, "{}", f.message);
        assert!(
            f.message.starts_with(&format!(
                "proxy '127.0.0.1:{port}' refused the connection to 'kusto-edge-test.invalid'"
            )),
            "{}",
            f.message
        );
        assert!(f.message.contains("403"), "{}", f.message);
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
    fn an_untrusted_certificate_names_the_problem_and_the_setting() {
        use rustls::CertificateError as C;
        let want = "the server's TLS certificate is not trusted (unknown issuer): set tls.ca_file to the CA that signed it";
        let wrapped = ureq::Error::Io(io::Error::new(
            io::ErrorKind::InvalidData,
            rustls::Error::InvalidCertificate(C::UnknownIssuer),
        ));
        for e in [cert(C::UnknownIssuer), wrapped] {
            let f = network_failure(&e, &direct());
            assert_eq!(f.class, FailureClass::TargetNotReady);
            assert_eq!(f.message.as_str(), want);
            assert!(!f.advice().contains("create the table"), "{}", f.advice());
        }
        // Behind a proxy, the likely signer is the proxy itself.
        let f = network_failure(&cert(C::UnknownIssuer), &proxied());
        assert!(f.message.starts_with(want) && f.message.contains("proxy that inspects TLS"));
        let f = network_failure(&cert(C::NotValidYet), &direct());
        assert_eq!(f.class, FailureClass::TargetNotReady);
        assert!(f.message.contains("clock"), "{}", f.message);
        let f = network_failure(&cert(C::Expired), &direct());
        assert!(f.message.contains("expired"), "{}", f.message);
        let f = network_failure(&cert(C::NotValidForName), &direct());
        assert!(
            f.message
                .contains("not for 'mycluster.westeurope.kusto.windows.net'"),
            "{}",
            f.message
        );
        let f = network_failure(&cert(C::BadSignature), &direct());
        assert_eq!(f.class, FailureClass::TargetNotReady);
        assert!(f.message.contains("BadSignature"), "{}", f.message);
    }

    #[test]
    fn a_real_server_with_an_unknown_ca_is_reported_as_untrusted() {
        let server = kusto_devserver::Server::start(kusto_devserver::ServerConfig {
            tls: true,
            ..Default::default()
        })
        .unwrap();
        let url = server.url();
        let t = transport(&url, None);
        let f = post(&t, &format!("{url}/v1/rest/ingest/db/T?streamFormat=csv"));
        assert_eq!(f.class, FailureClass::TargetNotReady, "{}", f.message);
        assert_eq!(
            f.message.as_str(),
            "the server's TLS certificate is not trusted (unknown issuer): set tls.ca_file to the CA that signed it"
        );
        assert!(server.requests().is_empty());
    }

    #[test]
    fn plain_http_where_tls_was_expected_points_at_the_scheme_and_port() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let server = std::thread::spawn(move || {
            let (mut s, _) = listener.accept().unwrap();
            let mut b = [0u8; 512];
            let _ = s.read(&mut b);
            let _ = s.write_all(
                b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
            );
        });
        let url = format!("https://localhost:{port}");
        let t = transport(&url, None);
        let f = post(&t, &format!("{url}/v1/rest/ingest/db/T?streamFormat=csv"));
        server.join().unwrap();
        assert_eq!(f.class, FailureClass::TargetNotReady, "{}", f.message);
        assert!(f.message.contains("did not answer in TLS"), "{}", f.message);
    }
}
