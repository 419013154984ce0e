//! Just enough HTTP/1.1 for one request after another on a connection: request line, headers,
//! `Content-Length` or chunked bodies, `Expect: 100-continue`, and size limits checked before
//! anything is read, so a client can neither hang nor bloat the server.

use std::io::{self, BufRead, Write};

/// Longest request line or header line.
pub const MAX_LINE: usize = 16 * 1024;
/// Most header lines in one request.
pub const MAX_HEADERS: usize = 128;

/// A parsed request.
#[derive(Debug, Clone)]
pub struct Request {
    pub method: String,
    /// Path without the query, still percent-encoded.
    pub path: String,
    /// Query string without `?`, still percent-encoded.
    pub query: String,
    pub version: String,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Request {
    /// First header of that name (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// Whether the connection must close after this request.
    pub fn wants_close(&self) -> bool {
        let conn = self.header("connection").unwrap_or("").to_ascii_lowercase();
        if self.version == "HTTP/1.0" {
            !conn.split(',').any(|t| t.trim() == "keep-alive")
        } else {
            conn.split(',').any(|t| t.trim() == "close")
        }
    }

    /// Decoded query parameters, in order.
    pub fn query_pairs(&self) -> Vec<(String, String)> {
        self.query
            .split('&')
            .filter(|s| !s.is_empty())
            .map(|kv| {
                let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
                (percent_decode(k, true), percent_decode(v, true))
            })
            .collect()
    }

    pub fn query_param(&self, name: &str) -> Option<String> {
        self.query_pairs()
            .into_iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v)
    }
}

/// Why no request could be read.
#[derive(Debug)]
pub enum ReadError {
    /// The peer closed the connection cleanly between requests.
    Closed,
    /// Socket error or timeout: drop the connection.
    Io(io::Error),
    /// Malformed request: answer 400 and close.
    Malformed(String),
    /// Body over the wire limit: answer 413 and close without reading it.
    TooLarge { declared: Option<usize> },
    /// Header section too large: answer 431 and close.
    HeadersTooLarge,
}

impl From<io::Error> for ReadError {
    fn from(e: io::Error) -> Self {
        ReadError::Io(e)
    }
}

/// Percent-decode (and, for query strings, turn `+` into a space). Invalid escapes stay as they are;
/// invalid UTF-8 is replaced.
pub fn percent_decode(s: &str, plus_is_space: bool) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let hex = |c: u8| (c as char).to_digit(16);
        match b[i] {
            b'%' if i + 2 < b.len() => match (hex(b[i + 1]), hex(b[i + 2])) {
                (Some(h), Some(l)) => {
                    out.push((h * 16 + l) as u8);
                    i += 3;
                    continue;
                }
                _ => out.push(b'%'),
            },
            b'+' if plus_is_space => out.push(b' '),
            c => out.push(c),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Read one line ending in LF (CRLF accepted), without the line ending, at most `MAX_LINE` bytes.
/// Returns `None` on EOF before any byte.
pub(crate) fn read_line<R: BufRead>(r: &mut R) -> Result<Option<String>, ReadError> {
    let mut line = Vec::new();
    loop {
        let buf = match r.fill_buf() {
            Ok(b) => b,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e.into()),
        };
        if buf.is_empty() {
            if line.is_empty() {
                return Ok(None);
            }
            return Err(ReadError::Malformed("connection closed mid-line".into()));
        }
        let (take, done) = match buf.iter().position(|&c| c == b'\n') {
            Some(n) => (n + 1, true),
            None => (buf.len(), false),
        };
        line.extend_from_slice(&buf[..take]);
        r.consume(take);
        if line.len() > MAX_LINE {
            return Err(ReadError::HeadersTooLarge);
        }
        if done {
            line.pop();
            if line.last() == Some(&b'\r') {
                line.pop();
            }
            return String::from_utf8(line)
                .map(Some)
                .map_err(|_| ReadError::Malformed("request line or header is not UTF-8".into()));
        }
    }
}

/// Read request line and headers. `Ok(None)` when the peer closed between requests.
pub fn read_head<R: BufRead>(r: &mut R) -> Result<Option<Request>, ReadError> {
    // Tolerate stray empty lines between requests (RFC 9112 section 2.2).
    let line = loop {
        match read_line(r) {
            Ok(None) => return Ok(None),
            Ok(Some(l)) if l.is_empty() => continue,
            Ok(Some(l)) => break l,
            Err(ReadError::Io(e))
                if matches!(
                    e.kind(),
                    io::ErrorKind::ConnectionReset | io::ErrorKind::UnexpectedEof
                ) =>
            {
                return Err(ReadError::Closed)
            }
            Err(e) => return Err(e),
        }
    };
    let mut parts = line.split(' ');
    let (method, target, version) = match (parts.next(), parts.next(), parts.next(), parts.next()) {
        (Some(m), Some(t), Some(v), None)
            if !m.is_empty() && t.starts_with('/') && v.starts_with("HTTP/1.") =>
        {
            (m, t, v)
        }
        _ => return Err(ReadError::Malformed(format!("bad request line {line:?}"))),
    };
    let (path, query) = target.split_once('?').unwrap_or((target, ""));
    let mut headers = Vec::new();
    loop {
        let l = read_line(r)?
            .ok_or_else(|| ReadError::Malformed("connection closed in headers".into()))?;
        if l.is_empty() {
            break;
        }
        if headers.len() >= MAX_HEADERS {
            return Err(ReadError::HeadersTooLarge);
        }
        let (k, v) = l
            .split_once(':')
            .ok_or_else(|| ReadError::Malformed(format!("bad header line {l:?}")))?;
        if k.is_empty() || k.contains(char::is_whitespace) {
            return Err(ReadError::Malformed(format!("bad header name {k:?}")));
        }
        headers.push((k.to_string(), v.trim().to_string()));
    }
    Ok(Some(Request {
        method: method.to_string(),
        path: path.to_string(),
        query: query.to_string(),
        version: version.to_string(),
        headers,
        body: Vec::new(),
    }))
}

/// How the body of a request is framed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    None,
    Length(usize),
    Chunked,
}

/// Decide the framing and refuse bodies declared over `max_wire` before reading them.
pub fn framing(req: &Request, max_wire: usize) -> Result<Framing, ReadError> {
    let te = req.header("transfer-encoding");
    let cl = req.header("content-length");
    match (te, cl) {
        (Some(_), Some(_)) => Err(ReadError::Malformed(
            "both Transfer-Encoding and Content-Length".into(),
        )),
        (Some(te), None) => {
            if te.eq_ignore_ascii_case("chunked") {
                Ok(Framing::Chunked)
            } else {
                Err(ReadError::Malformed(format!(
                    "unsupported Transfer-Encoding {te:?}"
                )))
            }
        }
        (None, Some(cl)) => {
            let n: usize = cl
                .parse()
                .map_err(|_| ReadError::Malformed(format!("bad Content-Length {cl:?}")))?;
            if n > max_wire {
                Err(ReadError::TooLarge { declared: Some(n) })
            } else {
                Ok(Framing::Length(n))
            }
        }
        (None, None) => Ok(Framing::None),
    }
}

fn read_exact_into<R: BufRead>(r: &mut R, out: &mut Vec<u8>, n: usize) -> Result<(), ReadError> {
    let start = out.len();
    out.resize(start + n, 0);
    r.read_exact(&mut out[start..]).map_err(|e| {
        if e.kind() == io::ErrorKind::UnexpectedEof {
            ReadError::Malformed("connection closed in body".into())
        } else {
            ReadError::Io(e)
        }
    })
}

/// Read the body as framed, never more than `max_wire` bytes.
pub fn read_body<R: BufRead>(
    r: &mut R,
    framing: Framing,
    max_wire: usize,
) -> Result<Vec<u8>, ReadError> {
    let mut body = Vec::new();
    match framing {
        Framing::None => {}
        Framing::Length(n) => read_exact_into(r, &mut body, n)?,
        Framing::Chunked => loop {
            let line = read_line(r)?
                .ok_or_else(|| ReadError::Malformed("connection closed in chunked body".into()))?;
            let size_text = line.split(';').next().unwrap_or("").trim();
            let size = usize::from_str_radix(size_text, 16)
                .map_err(|_| ReadError::Malformed(format!("bad chunk size {size_text:?}")))?;
            if size == 0 {
                // Trailer section, up to the empty line.
                let mut trailers = 0;
                loop {
                    let t = read_line(r)?.ok_or_else(|| {
                        ReadError::Malformed("connection closed in trailers".into())
                    })?;
                    if t.is_empty() {
                        break;
                    }
                    trailers += 1;
                    if trailers > MAX_HEADERS {
                        return Err(ReadError::HeadersTooLarge);
                    }
                }
                break;
            }
            if body.len().saturating_add(size) > max_wire {
                return Err(ReadError::TooLarge { declared: None });
            }
            read_exact_into(r, &mut body, size)?;
            let end = read_line(r)?;
            if end.as_deref() != Some("") {
                return Err(ReadError::Malformed("chunk not followed by CRLF".into()));
            }
        },
    }
    Ok(body)
}

/// A response to write.
#[derive(Debug, Clone)]
pub struct Response {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Response {
    pub fn new(status: u16) -> Response {
        Response {
            status,
            headers: Vec::new(),
            body: Vec::new(),
        }
    }

    pub fn json(status: u16, body: String) -> Response {
        Response::new(status)
            .header("Content-Type", "application/json; charset=utf-8")
            .body(body.into_bytes())
    }

    pub fn text(status: u16, body: impl Into<String>) -> Response {
        Response::new(status)
            .header("Content-Type", "text/plain; charset=utf-8")
            .body(body.into().into_bytes())
    }

    pub fn header(mut self, k: &str, v: impl Into<String>) -> Response {
        self.headers.push((k.to_string(), v.into()));
        self
    }

    pub fn body(mut self, b: Vec<u8>) -> Response {
        self.body = b;
        self
    }
}

pub fn reason(status: u16) -> &'static str {
    match status {
        100 => "Continue",
        200 => "OK",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        407 => "Proxy Authentication Required",
        413 => "Payload Too Large",
        429 => "Too Many Requests",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        _ => "Unknown",
    }
}

/// Wakes a listener's blocking `accept()` with a connection of our own, so its thread sees it should stop.
pub fn wake_accept(addr: std::net::SocketAddr) {
    use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpStream};
    let wake = match addr.ip() {
        IpAddr::V4(ip) if ip.is_unspecified() => {
            SocketAddr::new(Ipv4Addr::LOCALHOST.into(), addr.port())
        }
        IpAddr::V6(ip) if ip.is_unspecified() => {
            SocketAddr::new(Ipv6Addr::LOCALHOST.into(), addr.port())
        }
        _ => addr,
    };
    let _ = TcpStream::connect_timeout(&wake, std::time::Duration::from_secs(1));
}

/// Serialize a response with `Content-Length`, and `Connection: close` when `close`.
pub fn write_response<W: Write>(w: &mut W, resp: &Response, close: bool) -> io::Result<()> {
    let mut head = format!("HTTP/1.1 {} {}\r\n", resp.status, reason(resp.status));
    for (k, v) in &resp.headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    head.push_str(&format!("Content-Length: {}\r\n", resp.body.len()));
    if close {
        head.push_str("Connection: close\r\n");
    }
    head.push_str("\r\n");
    let mut all = head.into_bytes();
    all.extend_from_slice(&resp.body);
    w.write_all(&all)?;
    w.flush()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::BufReader;

    #[test]
    fn percent_decoding() {
        assert_eq!(percent_decode("a%20b%2Fc", false), "a b/c");
        assert_eq!(percent_decode("a+b", true), "a b");
        assert_eq!(percent_decode("a+b", false), "a+b");
        assert_eq!(percent_decode("100%", false), "100%");
        assert_eq!(percent_decode("%zz%4", false), "%zz%4");
    }

    #[test]
    fn two_requests_and_chunked() {
        let raw = b"POST /a?x=1 HTTP/1.1\r\nContent-Length: 3\r\n\r\nabc\
POST /b HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nhi\r\n3;ext=1\r\n th\r\n0\r\nX-T: 1\r\n\r\n";
        let mut r = BufReader::new(&raw[..]);
        let a = read_head(&mut r).unwrap().unwrap();
        assert_eq!((a.path.as_str(), a.query.as_str()), ("/a", "x=1"));
        let f = framing(&a, 100).unwrap();
        assert_eq!(read_body(&mut r, f, 100).unwrap(), b"abc");
        let b = read_head(&mut r).unwrap().unwrap();
        let f = framing(&b, 100).unwrap();
        assert_eq!(f, Framing::Chunked);
        assert_eq!(read_body(&mut r, f, 100).unwrap(), b"hi th");
        assert!(read_head(&mut r).unwrap().is_none());
    }

    #[test]
    fn limits() {
        let raw = b"POST / HTTP/1.1\r\nContent-Length: 101\r\n\r\n";
        let req = read_head(&mut BufReader::new(&raw[..])).unwrap().unwrap();
        assert!(matches!(
            framing(&req, 100),
            Err(ReadError::TooLarge {
                declared: Some(101)
            })
        ));
        let raw = b"5\r\nhello\r\n5\r\nworld\r\n0\r\n\r\n";
        assert!(matches!(
            read_body(&mut BufReader::new(&raw[..]), Framing::Chunked, 8),
            Err(ReadError::TooLarge { declared: None })
        ));
        let long = format!("GET /{} HTTP/1.1\r\n\r\n", "a".repeat(MAX_LINE + 10));
        assert!(matches!(
            read_head(&mut BufReader::new(long.as_bytes())),
            Err(ReadError::HeadersTooLarge)
        ));
    }
}
