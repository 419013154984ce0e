//! A request to the cluster that got no answer, as Kusto delivery sees it: [`network_failure`] turns a
//! [`TransportError`] into a [`Failure`] that names what failed (the cluster's host, the proxy, the certificate)
//! and what to fix, a pure function; and [`Transport::post`], the way the client sends a request, on top of
//! [`Transport::send`] and it.

use std::fmt::Write as _;

use crate::config::RESPONSE_BODY_BYTES;
use crate::response::{Failure, FailureClass};
use crate::transport::{
    CertificateProblem, Header, Method, RawResponse, Request, Route, Transport, TransportError,
    TransportErrorKind,
};

impl Transport {
    /// POSTs `body`; on an answer of any status, copies up to `body_buf.len()` bytes of its body (at most
    /// [`RESPONSE_BODY_BYTES`]). No answer is a [`network_failure`].
    // A failure is a fixed-size value on purpose: handling one must not allocate.
    #[allow(clippy::result_large_err)]
    pub fn post(
        &self,
        url: &str,
        headers: &[Header<'_>],
        body: &[u8],
        body_buf: &mut [u8],
    ) -> Result<RawResponse, Failure> {
        let limit = body_buf.len().min(RESPONSE_BODY_BYTES);
        let req = Request {
            method: Method::Post,
            url,
            headers,
            body,
            response_headers: &[],
            timeout: None,
        };
        match self.send(&req, &mut body_buf[..limit]) {
            Ok(r) => Ok(RawResponse {
                status: r.status,
                retry_after: r.retry_after,
                body_len: r.body_len,
            }),
            Err(e) => Err(network_failure(&e, self.route())),
        }
    }
}

/// Why a certificate was refused, in words that say what to change.
fn certificate_problem(p: CertificateProblem, detail: &str, route: &Route) -> String {
    use CertificateProblem as C;
    let inspected = if route.proxy.is_some() {
        " (a proxy that inspects TLS signs with its own CA: give that one)"
    } else {
        ""
    };
    match p {
        C::UnknownIssuer => format!(
            "the server's TLS certificate is not trusted (unknown issuer): set tls.ca_file to the CA that signed it{inspected}"
        ),
        C::Expired => "the server's TLS certificate has expired: renew it on the server, or check this device's clock".to_owned(),
        // Devices without a battery-backed clock boot in 1970 until NTP has run.
        C::NotValidYet => "the server's TLS certificate is not valid yet: this device's clock is probably wrong; set it (NTP) and the data goes out".to_owned(),
        C::NotValidForName => format!(
            "the server's TLS certificate is not for '{}': check the host name in the cluster URL",
            route.host
        ),
        C::Revoked => "the server's TLS certificate is revoked: the server needs a new certificate".to_owned(),
        C::Other => format!(
            "the server's TLS certificate is not accepted ({detail}): set tls.ca_file to the CA that signed it, or fix the server's certificate{inspected}"
        ),
    }
}

/// Turns a request without an HTTP answer into a failure that names what failed (the cluster's host, the proxy,
/// the certificate) and how it is handled: a configuration problem (a name that does not exist, an untrusted
/// certificate, a proxy that forbids the tunnel, a URL the transport refuses) is `TargetNotReady` (kept, retried
/// slowly, an operator fixes it), a passing fault is `Transient`.
pub fn network_failure(e: &TransportError, route: &Route) -> Failure {
    use TransportErrorKind as K;
    let not_ready = |message: &str| {
        let mut f = Failure::network(message);
        f.class = FailureClass::TargetNotReady;
        f
    };
    let via = route.proxy.as_ref();
    let detail = e.detail.as_str();
    let mut f = match e.kind {
        // Not a passing fault: the trust store, the clock or the server's certificate must change.
        K::Certificate(p) => return not_ready(&certificate_problem(p, detail, route)),
        // Plain HTTP (or something else) where TLS was expected: a wrong scheme or port, not a bad network.
        K::NotTls => {
            return not_ready(&format!(
                "the server at '{}' did not answer in TLS ({detail}): check the scheme (https) and port in the cluster URL",
                route.target
            ))
        }
        K::NameNotFound | K::DnsTryAgain => {
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
            return if e.kind == K::NameNotFound {
                not_ready(&format!("{what} '{host}' does not resolve: {fix}"))
            } else {
                Failure::network(&format!(
                    "{what} '{host}' could not be looked up now (temporary DNS failure): the network or the DNS server is not reachable"
                ))
            };
        }
        K::Proxy { status } => {
            let (proxy, setting) = match via {
                Some(p) => (p.addr(), p.setting),
                None => ("(unknown)".to_owned(), "proxy.url"),
            };
            let head = format!(
                "proxy '{proxy}' refused the connection to '{}'",
                route.target
            );
            return match status {
                Some(407) => not_ready(&format!(
                    "{head}: it wants credentials (407): put user:password in {setting}"
                )),
                // The proxy's view of the cluster (unreachable, unresolvable, overloaded) may change.
                Some(500..=599) => Failure::network(&format!(
                    "{head} ({detail}): the proxy could not reach the cluster; check the cluster URL and the proxy's own network"
                )),
                Some(_) => not_ready(&format!(
                    "{head} ({detail}): the proxy's rules must allow CONNECT to the cluster's host and port"
                )),
                None => Failure::network(&format!("{head} ({detail}): check {setting}")),
            };
        }
        // The URL breaks the transport's rules on plain http: only the configuration can change that.
        K::InsecureUrl => return not_ready(&format!("{e}")),
        K::ConnectionRefused => match via {
            Some(p) => Failure::network(&format!(
                "proxy '{}' refused the connection: check {} and that the proxy runs",
                p.addr(),
                p.setting
            )),
            None => Failure::network("connection refused: nothing listens at the cluster URL"),
        },
        K::Closed => Failure::network("the connection was closed before the service answered"),
        K::Timeout if detail.is_empty() => Failure::network("timed out"),
        K::Timeout => Failure::network(&format!("timed out ({detail})")),
        K::Connect => Failure::network("connection failed"),
        K::Io | K::Tls if detail.is_empty() => Failure::network("network error"),
        K::Io | K::Tls => Failure::network(&format!("network error: {detail}")),
        K::Protocol | K::BadRequest => Failure::network(detail),
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
    use crate::transport::{ProxyConfig, ProxyRoute, TransportConfig};
    use crate::wire::ClusterUrl;
    use std::io::{Read, Write};
    use std::net::TcpListener;
    use std::time::Duration;
    use CertificateProblem as C;
    use FailureClass::{TargetNotReady as NotReady, Transient};
    use TransportErrorKind as K;

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

    fn fail(kind: TransportErrorKind, detail: &str, route: &Route) -> Failure {
        network_failure(&TransportError::new(kind, detail), route)
    }

    const UNTRUSTED: &str = "the server's TLS certificate is not trusted (unknown issuer): set tls.ca_file to the CA that signed it";

    #[test]
    fn every_kind_without_a_proxy_has_its_class_and_message() {
        let table: &[(TransportErrorKind, &str, FailureClass, &str)] = &[
            (K::NameNotFound, "Name or service not known", NotReady, "host name 'mycluster.westeurope.kusto.windows.net' does not resolve: check the cluster URL"),
            (K::DnsTryAgain, "", Transient, "host name 'mycluster.westeurope.kusto.windows.net' could not be looked up now (temporary DNS failure): the network or the DNS server is not reachable"),
            (K::ConnectionRefused, "", Transient, "connection refused: nothing listens at the cluster URL"),
            (K::Connect, "", Transient, "connection failed"),
            (K::Closed, "", Transient, "the connection was closed before the service answered"),
            (K::Timeout, "", Transient, "timed out"),
            (K::Timeout, "connect", Transient, "timed out (connect)"),
            (K::Certificate(C::UnknownIssuer), "UnknownIssuer", NotReady, UNTRUSTED),
            (K::Certificate(C::Expired), "Expired", NotReady, "the server's TLS certificate has expired: renew it on the server, or check this device's clock"),
            (K::Certificate(C::NotValidYet), "NotValidYet", NotReady, "the server's TLS certificate is not valid yet: this device's clock is probably wrong; set it (NTP) and the data goes out"),
            (K::Certificate(C::NotValidForName), "NotValidForName", NotReady, "the server's TLS certificate is not for 'mycluster.westeurope.kusto.windows.net': check the host name in the cluster URL"),
            (K::Certificate(C::Revoked), "Revoked", NotReady, "the server's TLS certificate is revoked: the server needs a new certificate"),
            (K::Certificate(C::Other), "BadSignature", NotReady, "the server's TLS certificate is not accepted (BadSignature): set tls.ca_file to the CA that signed it, or fix the server's certificate"),
            (K::NotTls, "InvalidContentType", NotReady, "the server at 'mycluster.westeurope.kusto.windows.net' did not answer in TLS (InvalidContentType): check the scheme (https) and port in the cluster URL"),
            (K::Tls, "received fatal alert: HandshakeFailure", Transient, "network error: received fatal alert: HandshakeFailure"),
            (K::Tls, "", Transient, "network error"),
            (K::Io, "Permission denied (os error 13)", Transient, "network error: Permission denied (os error 13)"),
            (K::Io, "", Transient, "network error"),
            (K::Protocol, "response header is too big: 70000 > 16384", Transient, "response header is too big: 70000 > 16384"),
            (K::Protocol, "", Transient, "network error"),
            (K::BadRequest, "bad uri: no host", Transient, "bad uri: no host"),
            (K::InsecureUrl, "plain http to a host that is not loopback is not allowed: use https", NotReady, "plain http to a host that is not loopback is not allowed: use https"),
            // Without a proxy on the route, a proxy failure still names the setting.
            (K::Proxy { status: None }, "proxy server did not respond", Transient, "proxy '(unknown)' refused the connection to 'mycluster.westeurope.kusto.windows.net' (proxy server did not respond): check proxy.url"),
        ];
        for &(kind, detail, class, message) in table {
            let f = fail(kind, detail, &direct());
            assert_eq!(
                (f.class, f.message.as_str()),
                (class, message),
                "{kind:?} {detail:?}"
            );
            assert_eq!((f.status, f.code.as_str(), f.retry_after), (0, "", None));
            if class == NotReady {
                // No answer at all: "create the table" would send the operator to the wrong place.
                assert!(
                    f.advice().starts_with("fix what the message names"),
                    "{}",
                    f.advice()
                );
            }
        }
    }

    #[test]
    fn through_a_proxy_the_proxy_is_named() {
        let p = "proxy 'proxy.plant.local:3128'";
        let to = "refused the connection to 'mycluster.westeurope.kusto.windows.net'";
        let table: &[(TransportErrorKind, &str, FailureClass, String)] = &[
            // Behind a CONNECT proxy only the proxy's own name is looked up here.
            (K::NameNotFound, "", NotReady, "proxy host name 'proxy.plant.local' does not resolve: check proxy.url".into()),
            (K::DnsTryAgain, "", Transient, "proxy host name 'proxy.plant.local' could not be looked up now (temporary DNS failure): the network or the DNS server is not reachable".into()),
            (K::ConnectionRefused, "", Transient, format!("{p} refused the connection: check proxy.url and that the proxy runs")),
            (K::Proxy { status: Some(403) }, "proxy server responded 403/Forbidden", NotReady, format!("{p} {to} (proxy server responded 403/Forbidden): the proxy's rules must allow CONNECT to the cluster's host and port")),
            (K::Proxy { status: Some(407) }, "proxy server responded 407/Proxy Authentication Required", NotReady, format!("{p} {to}: it wants credentials (407): put user:password in proxy.url")),
            (K::Proxy { status: Some(502) }, "proxy server responded 502/Bad Gateway", Transient, format!("{p} {to} (proxy server responded 502/Bad Gateway): the proxy could not reach the cluster; check the cluster URL and the proxy's own network")),
            (K::Proxy { status: None }, "proxy server did not respond", Transient, format!("{p} {to} (proxy server did not respond): check proxy.url")),
            // Behind a proxy, the likely signer of an unknown certificate is the proxy itself.
            (K::Certificate(C::UnknownIssuer), "", NotReady, format!("{UNTRUSTED} (a proxy that inspects TLS signs with its own CA: give that one)")),
            // Other failures on the way say that a proxy was in between.
            (K::Closed, "", Transient, "the connection was closed before the service answered (through proxy 'proxy.plant.local:3128')".into()),
            (K::Timeout, "connect", Transient, "timed out (connect) (through proxy 'proxy.plant.local:3128')".into()),
            (K::Io, "", Transient, "network error (through proxy 'proxy.plant.local:3128')".into()),
        ];
        for (kind, detail, class, message) in table {
            let f = fail(*kind, detail, &proxied());
            assert_eq!(
                (f.class, f.message.as_str()),
                (*class, message.as_str()),
                "{kind:?}"
            );
        }
        let mut env = proxied();
        env.proxy.as_mut().unwrap().setting = "HTTPS_PROXY";
        let f = fail(K::NameNotFound, "", &env);
        assert!(f.message.ends_with("check HTTPS_PROXY"), "{}", f.message);
    }

    #[test]
    fn a_long_detail_still_makes_a_bounded_message() {
        let f = fail(K::Io, &"x".repeat(4000), &proxied());
        assert!(f.message.len() <= 512);
        assert!(f.message.starts_with("network error: xxx"));
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
        assert_eq!(f.message.as_str(), UNTRUSTED);
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

    #[test]
    fn post_answers_with_the_status_retry_after_and_a_bounded_body() {
        let (base, server) = crate::transport::test_server::serve(vec![(
            429,
            vec![("Retry-After", "7".into())],
            "y".repeat(RESPONSE_BODY_BYTES + 100),
        )]);
        let cfg = TransportConfig {
            allow_plain: true,
            ..TransportConfig::default()
        };
        let t = Transport::new(&cfg, &ClusterUrl::parse(&base).unwrap()).unwrap();
        let mut buf = vec![0u8; RESPONSE_BODY_BYTES * 2];
        let r = t
            .post(
                &format!("{base}/v1/rest/ingest/db/T?streamFormat=csv"),
                &[("Content-Type", "text/csv"), ("x-ms-app", "test")],
                b"a,b\n",
                &mut buf,
            )
            .unwrap_or_else(|f| panic!("{}", f.message));
        assert_eq!(r.status, 429);
        assert_eq!(r.retry_after.as_deref(), Some("7"));
        // At most RESPONSE_BODY_BYTES, whatever the buffer.
        assert_eq!(r.body_len, RESPONSE_BODY_BYTES);
        assert!(buf[..r.body_len].iter().all(|&b| b == b'y'));
        let seen = server.join().unwrap();
        let req = seen[0].to_ascii_lowercase();
        assert!(
            req.starts_with("post /v1/rest/ingest/db/t?streamformat=csv http/1.1\r\n"),
            "{req}"
        );
        assert!(
            req.contains("\r\ncontent-type: text/csv\r\n")
                && req.contains("\r\nx-ms-app: test\r\n"),
            "{req}"
        );
        assert!(
            req.contains("\r\ncontent-length: 4\r\n") && req.ends_with("\r\n\r\na,b\n"),
            "{req}"
        );
        // Plain http beyond what the rules allow is a configuration problem, named as such, and nothing is sent.
        let t = Transport::new(
            &TransportConfig::default(),
            &ClusterUrl::parse(&base).unwrap(),
        )
        .unwrap();
        let f = t
            .post(&format!("{base}/x"), &[], b"", &mut buf)
            .err()
            .unwrap();
        assert_eq!(f.class, FailureClass::TargetNotReady, "{}", f.message);
        assert!(f.message.contains("plain http"), "{}", f.message);
    }
}
