//! HTTP over TLS: one `ureq` agent per client with keep-alive, rustls with ring, verification always on, and every
//! phase bounded by the configured timeouts. It sends a prepared request and hands back the status, `Retry-After`
//! and a bounded prefix of the body; what they mean is `response`'s business.

use std::io::Read;
use std::sync::Arc;
use std::time::Duration;

use ureq::tls::{Certificate, RootCerts, TlsConfig, TlsProvider};

use crate::config::{Config, RESPONSE_BODY_BYTES};
use crate::error::{Error, ErrorKind};
use crate::response::{Failure, FailureClass};

/// Parses PEM text into CA certificates; fails when there is none or one is malformed.
pub fn parse_ca_pem(pem: &[u8]) -> Result<Vec<Certificate<'static>>, Error> {
    let mut certs = Vec::new();
    for item in ureq::tls::parse_pem(pem) {
        match item {
            Ok(ureq::tls::PemItem::Certificate(c)) => certs.push(c),
            Ok(_) => {}
            Err(e) => {
                return Err(Error::new(
                    ErrorKind::TlsConfig,
                    format!("CA PEM is malformed: {e}"),
                ))
            }
        }
    }
    if certs.is_empty() {
        return Err(Error::new(
            ErrorKind::TlsConfig,
            "no CERTIFICATE found in the CA PEM",
        ));
    }
    Ok(certs)
}

/// HTTP read buffer per connection: holds the response head.
pub const INPUT_BUFFER_BYTES: usize = 16 * 1024;
/// HTTP write buffer per connection: the request head and body pieces.
pub const OUTPUT_BUFFER_BYTES: usize = 16 * 1024;

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
}

impl Transport {
    /// Builds the agent: trust store, timeouts, no redirects, the proxy from `proxy.url` or `HTTPS_PROXY`/`NO_PROXY`.
    /// DNS is left to the system resolver's own bounds (`timeout:`/`attempts:` in resolv.conf): a resolve timeout
    /// in ureq would start a thread per lookup, and this library starts no threads.
    pub fn new(cfg: &Config, cluster: &crate::wire::ClusterUrl) -> Result<Transport, Error> {
        // A proxy from the environment is for the outside world: a loopback endpoint (tests, a local agent) is
        // reached directly. An explicit proxy.url applies to everything.
        let proxy = cfg
            .auth
            .proxy()?
            .filter(|p| !(p.is_from_env() && cluster.is_loopback()));
        let mut roots: Vec<Certificate<'static>> = Vec::new();
        if cfg.bundled_roots {
            roots.extend(
                webpki_root_certs::TLS_SERVER_ROOT_CERTS
                    .iter()
                    .map(|c| Certificate::from_der(c.as_ref())),
            );
        }
        if !cfg.ca_pem.is_empty() {
            roots.extend(parse_ca_pem(&cfg.ca_pem)?);
        }
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
        Ok(Transport { agent })
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
        let mut resp = req.send(body).map_err(|e| network_failure(&e))?;
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

fn network_failure(e: &ureq::Error) -> Failure {
    if let Some(rustls::Error::InvalidCertificate(c)) = rustls_error(e) {
        // Not a passing fault: the trust store or the server's certificate must change.
        let mut f = Failure::network(&format!(
            "the server's TLS certificate is not accepted ({c:?}): set tls.ca_file to the CA that signed it, or fix the server's certificate"
        ));
        f.class = FailureClass::TargetNotReady;
        return f;
    }
    let mut f = match e {
        ureq::Error::Io(io) => {
            use std::io::ErrorKind as K;
            match io.kind() {
                K::UnexpectedEof | K::ConnectionReset | K::ConnectionAborted | K::BrokenPipe => {
                    Failure::network("the connection was closed before the service answered")
                }
                K::ConnectionRefused => {
                    Failure::network("connection refused: nothing listens at the cluster URL")
                }
                K::TimedOut | K::WouldBlock => Failure::network("timed out"),
                _ => Failure::network(&format!("network error: {io}")),
            }
        }
        ureq::Error::Timeout(t) => Failure::network(&format!("timed out ({t})")),
        ureq::Error::HostNotFound => Failure::network("host not found (DNS)"),
        ureq::Error::ConnectionFailed => Failure::network("connection failed"),
        other => Failure::network(&format!("{other}")),
    };
    if f.message.is_empty() {
        f.message = heapless::String::try_from("network error").unwrap_or_default();
    }
    f
}
