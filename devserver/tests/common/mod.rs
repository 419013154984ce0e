//! A tiny blocking HTTP/1.1 client over std sockets (and rustls with the test CA), so the tests
//! see exactly the bytes a real client would.
#![allow(dead_code)]

use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;
use std::time::Duration;

use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, ServerName};

pub trait Rw: Read + Write + Send {}
impl<T: Read + Write + Send> Rw for T {}

pub struct Conn {
    pub r: BufReader<Box<dyn Rw>>,
}

#[derive(Debug)]
pub struct Resp {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Resp {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {:?}", String::from_utf8_lossy(&self.body)))
    }
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

pub fn connect(addr: SocketAddr) -> Conn {
    let s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    Conn {
        r: BufReader::new(Box::new(s)),
    }
}

pub fn tls_config(ca_pem: Option<&str>) -> Arc<rustls::ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    if let Some(pem) = ca_pem {
        for c in CertificateDer::pem_slice_iter(pem.as_bytes()) {
            roots.add(c.unwrap()).unwrap();
        }
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    Arc::new(
        rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth(),
    )
}

pub fn connect_tls(addr: SocketAddr, cfg: Arc<rustls::ClientConfig>, host: &str) -> Conn {
    let s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let c = rustls::ClientConnection::new(cfg, ServerName::try_from(host.to_string()).unwrap())
        .unwrap();
    Conn {
        r: BufReader::new(Box::new(rustls::StreamOwned::new(c, s))),
    }
}

/// The headers every SDK sends on a streaming ingest.
pub fn sdk_headers(crid: &str) -> Vec<(String, String)> {
    vec![
        ("x-ms-client-request-id".into(), crid.into()),
        ("x-ms-version".into(), "2024-12-12".into()),
        ("x-ms-app".into(), "devserver-tests".into()),
        ("Accept".into(), "application/json".into()),
    ]
}

impl Conn {
    pub fn send_raw(&mut self, bytes: &[u8]) -> io::Result<()> {
        let w = self.r.get_mut();
        w.write_all(bytes)?;
        w.flush()
    }

    pub fn send(
        &mut self,
        method: &str,
        target: &str,
        headers: &[(String, String)],
        body: &[u8],
    ) -> io::Result<()> {
        let mut req = format!("{method} {target} HTTP/1.1\r\nHost: localhost\r\n");
        for (k, v) in headers {
            req.push_str(&format!("{k}: {v}\r\n"));
        }
        req.push_str(&format!("Content-Length: {}\r\n\r\n", body.len()));
        let mut all = req.into_bytes();
        all.extend_from_slice(body);
        self.send_raw(&all)
    }

    pub fn read_response(&mut self) -> io::Result<Resp> {
        let mut line = String::new();
        loop {
            line.clear();
            if self.r.read_line(&mut line)? == 0 {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "closed before a response",
                ));
            }
            let status: u16 = line
                .split(' ')
                .nth(1)
                .and_then(|s| s.parse().ok())
                .ok_or_else(|| {
                    io::Error::new(
                        io::ErrorKind::InvalidData,
                        format!("bad status line {line:?}"),
                    )
                })?;
            let mut headers = Vec::new();
            loop {
                let mut h = String::new();
                self.r.read_line(&mut h)?;
                let h = h.trim_end();
                if h.is_empty() {
                    break;
                }
                let (k, v) = h.split_once(':').unwrap();
                headers.push((k.to_string(), v.trim().to_string()));
            }
            if status == 100 {
                continue;
            }
            let len: usize = headers
                .iter()
                .find(|(k, _)| k.eq_ignore_ascii_case("content-length"))
                .map(|(_, v)| v.parse().unwrap())
                .unwrap_or(0);
            let mut body = vec![0; len];
            self.r.read_exact(&mut body)?;
            return Ok(Resp {
                status,
                headers,
                body,
            });
        }
    }

    pub fn request(
        &mut self,
        method: &str,
        target: &str,
        headers: &[(String, String)],
        body: &[u8],
    ) -> io::Result<Resp> {
        self.send(method, target, headers, body)?;
        self.read_response()
    }

    /// A gzip ingest with the SDK headers.
    pub fn ingest(
        &mut self,
        db: &str,
        table: &str,
        format: &str,
        crid: &str,
        raw: &[u8],
    ) -> io::Result<Resp> {
        let mut h = sdk_headers(crid);
        h.push(("Content-Encoding".into(), "gzip".into()));
        let body = kusto_devserver::gzip::gzip(raw);
        self.request(
            "POST",
            &format!("/v1/rest/ingest/{db}/{table}?streamFormat={format}"),
            &h,
            &body,
        )
    }
}
