//! A tiny blocking HTTP/1.1 client (one request per connection, plain or TLS with a given CA), for the
//! data-management side's calls to Azure Storage and for tests that drive the whole flow by hand.

use std::io::{self, BufReader, Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::sync::Arc;
use std::time::Duration;

use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, ServerName};

use crate::http::{self, Framing, ReadError};

/// Largest response body read.
pub const MAX_RESPONSE: usize = 64 * 1024 * 1024;

/// A response.
#[derive(Clone, Debug)]
pub struct ClientResponse {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl ClientResponse {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// The parts of an `http://` or `https://` URL.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Url {
    pub https: bool,
    pub host: String,
    pub port: u16,
    /// Path and query, starting with `/`.
    pub target: String,
}

impl Url {
    pub fn parse(url: &str) -> Option<Url> {
        let (https, rest) = if let Some(r) = url.strip_prefix("https://") {
            (true, r)
        } else {
            (false, url.strip_prefix("http://")?)
        };
        let (authority, target) = match rest.find(['/', '?']) {
            Some(i) if rest.as_bytes()[i] == b'/' => (&rest[..i], rest[i..].to_string()),
            Some(i) => (&rest[..i], format!("/{}", &rest[i..])),
            None => (rest, "/".to_string()),
        };
        let (host, port) = if let Some(r) = authority.strip_prefix('[') {
            let (h, p) = r.split_once(']')?;
            (h.to_string(), p.strip_prefix(':'))
        } else {
            match authority.rsplit_once(':') {
                Some((h, p)) => (h.to_string(), Some(p)),
                None => (authority.to_string(), None),
            }
        };
        let port = match port {
            Some(p) => p.parse().ok()?,
            None if https => 443,
            None => 80,
        };
        (!host.is_empty()).then_some(Url {
            https,
            host,
            port,
            target,
        })
    }

    /// `host:port` as the `Host` header carries it.
    pub fn host_header(&self) -> String {
        if self.host.contains(':') {
            format!("[{}]:{}", self.host, self.port)
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }
}

trait Rw: Read + Write + Send {}
impl<T: Read + Write + Send> Rw for T {}

/// A client configuration for TLS that trusts only the given CA (PEM, may hold several certificates).
pub fn tls_client_config(ca_pem: &str) -> io::Result<Arc<rustls::ClientConfig>> {
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
        roots
            .add(c.map_err(io::Error::other)?)
            .map_err(io::Error::other)?;
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let cfg = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(io::Error::other)?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(Arc::new(cfg))
}

/// Send one request and read the whole answer. `ca_pem` is required for `https://`. Adds `Host`,
/// `Content-Length` and `Connection: close`.
pub fn request(
    method: &str,
    url: &str,
    headers: &[(&str, &str)],
    body: &[u8],
    ca_pem: Option<&str>,
    timeout: Duration,
) -> io::Result<ClientResponse> {
    let u = Url::parse(url)
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, format!("bad URL {url:?}")))?;
    let addr = (u.host.as_str(), u.port)
        .to_socket_addrs()?
        .next()
        .ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, "no address"))?;
    let tcp = TcpStream::connect_timeout(&addr, timeout)?;
    tcp.set_read_timeout(Some(timeout))?;
    tcp.set_write_timeout(Some(timeout))?;
    let _ = tcp.set_nodelay(true);
    let mut conn: Box<dyn Rw> = if u.https {
        let cfg = tls_client_config(ca_pem.unwrap_or(""))?;
        let name = ServerName::try_from(u.host.clone()).map_err(io::Error::other)?;
        let c = rustls::ClientConnection::new(cfg, name).map_err(io::Error::other)?;
        Box::new(rustls::StreamOwned::new(c, tcp))
    } else {
        Box::new(tcp)
    };
    let mut head = format!(
        "{method} {} HTTP/1.1\r\nHost: {}\r\n",
        u.target,
        u.host_header()
    );
    for (k, v) in headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    let has_len = headers
        .iter()
        .any(|(k, _)| k.eq_ignore_ascii_case("content-length"));
    if !has_len && (!body.is_empty() || matches!(method, "POST" | "PUT" | "MERGE" | "PATCH")) {
        head.push_str(&format!("Content-Length: {}\r\n", body.len()));
    }
    head.push_str("Connection: close\r\n\r\n");
    let mut all = head.into_bytes();
    all.extend_from_slice(body);
    conn.write_all(&all)?;
    conn.flush()?;
    read_response(&mut BufReader::new(conn), method == "HEAD")
}

fn read_response<R: io::BufRead>(r: &mut R, head_only: bool) -> io::Result<ClientResponse> {
    let bad = |m: String| io::Error::new(io::ErrorKind::InvalidData, m);
    let conv = |e: ReadError| match e {
        ReadError::Io(e) => e,
        ReadError::Closed => io::Error::new(io::ErrorKind::UnexpectedEof, "connection closed"),
        other => bad(format!("{other:?}")),
    };
    loop {
        let (status, headers) = http::read_response_head(r)
            .map_err(conv)?
            .ok_or_else(|| io::Error::new(io::ErrorKind::UnexpectedEof, "no answer"))?;
        if (100..200).contains(&status) {
            continue;
        }
        let resp = ClientResponse {
            status,
            headers,
            body: Vec::new(),
        };
        if head_only || status == 204 || status == 304 {
            return Ok(resp);
        }
        let framing = if resp
            .header("transfer-encoding")
            .is_some_and(|t| t.eq_ignore_ascii_case("chunked"))
        {
            Some(Framing::Chunked)
        } else {
            match resp.header("content-length") {
                Some(n) => Some(Framing::Length(
                    n.parse()
                        .map_err(|_| bad(format!("bad Content-Length {n:?}")))?,
                )),
                None => None,
            }
        };
        let body = match framing {
            Some(f) => http::read_body(r, f, MAX_RESPONSE).map_err(conv)?,
            None => {
                let mut b = Vec::new();
                r.take(MAX_RESPONSE as u64).read_to_end(&mut b)?;
                b
            }
        };
        return Ok(ClientResponse { body, ..resp });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls() {
        let u = Url::parse("http://127.0.0.1:10000/devstoreaccount1/c/b.gz?sv=1&sig=x").unwrap();
        assert_eq!(
            (u.https, u.host.as_str(), u.port, u.target.as_str()),
            (
                false,
                "127.0.0.1",
                10000,
                "/devstoreaccount1/c/b.gz?sv=1&sig=x"
            )
        );
        let u = Url::parse("https://localhost?x").unwrap();
        assert_eq!((u.port, u.target.as_str()), (443, "/?x"));
        let u = Url::parse("http://[::1]:9/").unwrap();
        assert_eq!(u.host_header(), "[::1]:9");
        assert!(Url::parse("ftp://x").is_none());
    }
}
