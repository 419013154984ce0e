//! Just enough HTTP/1.1 for one request after another on a connection: request line, headers,
//! `Content-Length` or chunked bodies, `Expect: 100-continue`, and size limits checked before
//! anything is read, so a client can neither hang nor bloat the server.
//!
//! Heads and chunk sizes are parsed by `httparse` and percent-escapes decoded by `percent-encoding`, not
//! by code of the library under test; this module only bounds what is read (lines, header counts, body
//! sizes) and frames bodies.

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

/// Percent-decode (and, for query strings, turn `+` into a space) with `percent-encoding`. Invalid
/// escapes stay as they are; invalid UTF-8 is replaced.
pub fn percent_decode(s: &str, plus_is_space: bool) -> String {
    let spaced;
    let s = if plus_is_space && s.contains('+') {
        spaced = s.replace('+', " ");
        spaced.as_str()
    } else {
        s
    };
    percent_encoding::percent_decode_str(s)
        .decode_utf8_lossy()
        .into_owned()
}

/// Read one line ending in LF, line ending included, at most `MAX_LINE` bytes.
/// Returns `None` on EOF before any byte.
fn read_raw_line<R: BufRead>(r: &mut R) -> Result<Option<Vec<u8>>, ReadError> {
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
        if line.len() + take > MAX_LINE + 2 {
            return Err(ReadError::HeadersTooLarge);
        }
        line.extend_from_slice(&buf[..take]);
        r.consume(take);
        if done {
            return Ok(Some(line));
        }
    }
}

fn is_blank(line: &[u8]) -> bool {
    matches!(line, b"\n" | b"\r\n")
}

/// The bytes of a head: the start line and the header lines up to and including the empty line, at
/// most `MAX_LINE` per line and `MAX_HEADERS` header lines. Empty lines before the start line are
/// skipped (RFC 9112 section 2.2). `Ok(None)` when the peer closed before sending anything.
fn read_head_bytes<R: BufRead>(r: &mut R) -> Result<Option<Vec<u8>>, ReadError> {
    let first = loop {
        match read_raw_line(r) {
            Ok(None) => return Ok(None),
            Ok(Some(l)) if is_blank(&l) => continue,
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
    let mut head = first;
    let mut lines = 0;
    loop {
        let l = read_raw_line(r)?
            .ok_or_else(|| ReadError::Malformed("connection closed in headers".into()))?;
        head.extend_from_slice(&l);
        if is_blank(&l) {
            return Ok(Some(head));
        }
        lines += 1;
        if lines > MAX_HEADERS {
            return Err(ReadError::HeadersTooLarge);
        }
    }
}

/// The start line of a head, for messages.
fn start_line(head: &[u8]) -> String {
    let end = head.iter().position(|&b| b == b'\n').unwrap_or(head.len());
    String::from_utf8_lossy(&head[..end]).trim_end().to_string()
}

fn parse_error(e: httparse::Error, head: &[u8]) -> ReadError {
    match e {
        httparse::Error::TooManyHeaders => ReadError::HeadersTooLarge,
        e => ReadError::Malformed(format!("{e} in {:?}", start_line(head))),
    }
}

/// Header fields in order, names as sent.
pub type Headers = Vec<(String, String)>;

/// Header names and values as text; values must be UTF-8 (the service's are ASCII).
fn headers_of(parsed: &[httparse::Header<'_>]) -> Result<Headers, ReadError> {
    parsed
        .iter()
        .map(|h| {
            let v = std::str::from_utf8(h.value)
                .map_err(|_| ReadError::Malformed(format!("header {:?} is not UTF-8", h.name)))?;
            Ok((h.name.to_string(), v.trim().to_string()))
        })
        .collect()
}

fn version_of(minor: Option<u8>) -> String {
    format!("HTTP/1.{}", minor.unwrap_or(1))
}

/// Read a request line and headers, parsed by `httparse`, with any request target (origin form,
/// `host:port` or an absolute URI) left whole in `path`. `Ok(None)` when the peer closed between
/// requests.
pub(crate) fn read_request_head<R: BufRead>(r: &mut R) -> Result<Option<Request>, ReadError> {
    let Some(head) = read_head_bytes(r)? else {
        return Ok(None);
    };
    let mut slots = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut slots);
    match req.parse(&head) {
        Ok(httparse::Status::Complete(n)) if n == head.len() => {}
        Ok(_) => {
            return Err(ReadError::Malformed(format!(
                "incomplete head {:?}",
                start_line(&head)
            )))
        }
        Err(e) => return Err(parse_error(e, &head)),
    }
    Ok(Some(Request {
        method: req.method.unwrap_or_default().to_string(),
        path: req.path.unwrap_or_default().to_string(),
        query: String::new(),
        version: version_of(req.version),
        headers: headers_of(req.headers)?,
        body: Vec::new(),
    }))
}

/// Read request line and headers of an origin-form request (`/path?query`). `Ok(None)` when the peer
/// closed between requests.
pub fn read_head<R: BufRead>(r: &mut R) -> Result<Option<Request>, ReadError> {
    let Some(mut req) = read_request_head(r)? else {
        return Ok(None);
    };
    if !req.path.starts_with('/') {
        return Err(ReadError::Malformed(format!(
            "request target {:?} is not a path",
            req.path
        )));
    }
    if let Some((path, query)) = req.path.split_once('?') {
        (req.path, req.query) = (path.to_string(), query.to_string());
    }
    Ok(Some(req))
}

/// A response's status line and headers, parsed by `httparse`. Informational (1xx) heads are returned
/// like any other.
pub(crate) fn read_response_head<R: BufRead>(
    r: &mut R,
) -> Result<Option<(u16, Headers)>, ReadError> {
    let Some(head) = read_head_bytes(r)? else {
        return Ok(None);
    };
    let mut slots = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut resp = httparse::Response::new(&mut slots);
    match resp.parse(&head) {
        Ok(httparse::Status::Complete(n)) if n == head.len() => {}
        Ok(_) => {
            return Err(ReadError::Malformed(format!(
                "incomplete head {:?}",
                start_line(&head)
            )))
        }
        Err(e) => return Err(parse_error(e, &head)),
    }
    Ok(Some((
        resp.code.unwrap_or_default(),
        headers_of(resp.headers)?,
    )))
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

/// The trailer section after the last chunk, up to the empty line: header fields (checked by
/// `httparse`, then dropped), at most `MAX_HEADERS`.
fn read_trailers<R: BufRead>(r: &mut R) -> Result<(), ReadError> {
    let mut section = Vec::new();
    let mut fields = 0;
    loop {
        let t = read_raw_line(r)?
            .ok_or_else(|| ReadError::Malformed("connection closed in trailers".into()))?;
        section.extend_from_slice(&t);
        if is_blank(&t) {
            break;
        }
        fields += 1;
        if fields > MAX_HEADERS {
            return Err(ReadError::HeadersTooLarge);
        }
    }
    let mut slots = [httparse::EMPTY_HEADER; MAX_HEADERS];
    match httparse::parse_headers(&section, &mut slots) {
        Ok(httparse::Status::Complete((n, _))) if n == section.len() => Ok(()),
        Ok(_) => Err(ReadError::Malformed("incomplete trailer section".into())),
        Err(e) => Err(ReadError::Malformed(format!("bad trailer section: {e}"))),
    }
}

/// Read the body as framed, never more than `max_wire` bytes. Chunk sizes are parsed by `httparse`.
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
            let line = read_raw_line(r)?
                .ok_or_else(|| ReadError::Malformed("connection closed in chunked body".into()))?;
            let bad_size =
                || ReadError::Malformed(format!("bad chunk size line {:?}", start_line(&line)));
            // httparse reads an empty size as 0; a size needs at least one digit.
            if !line.first().is_some_and(u8::is_ascii_hexdigit) {
                return Err(bad_size());
            }
            let size = match httparse::parse_chunk_size(&line) {
                Ok(httparse::Status::Complete((n, size))) if n == line.len() => size,
                _ => return Err(bad_size()),
            };
            if size == 0 {
                read_trailers(r)?;
                break;
            }
            let size = usize::try_from(size).unwrap_or(usize::MAX);
            if body.len().saturating_add(size) > max_wire {
                return Err(ReadError::TooLarge { declared: None });
            }
            read_exact_into(r, &mut body, size)?;
            let end = read_raw_line(r)?;
            if !end.as_deref().is_some_and(is_blank) {
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

    fn head(raw: &[u8]) -> Result<Option<Request>, ReadError> {
        read_head(&mut BufReader::new(raw))
    }

    #[test]
    fn heads_are_parsed_strictly() {
        let r = head(b"\r\nGET /p%20q?a=b+c HTTP/1.0\nHost:  x \nX-Y: 1\n\n")
            .unwrap()
            .unwrap();
        assert_eq!(
            (r.method.as_str(), r.path.as_str(), r.version.as_str()),
            ("GET", "/p%20q", "HTTP/1.0")
        );
        assert_eq!(r.query_param("a").as_deref(), Some("b c"));
        assert_eq!(r.header("host"), Some("x"));
        assert!(r.wants_close());
        for bad in [
            &b"GET /a HTTP/2.0\r\n\r\n"[..],
            b"GET /a\r\n\r\n",
            b"GET  /a HTTP/1.1\r\n\r\n",
            b"GET a HTTP/1.1\r\n\r\n",
            b"GET /a HTTP/1.1\r\nBad Name: x\r\n\r\n",
            b"GET /a HTTP/1.1\r\nNoColon\r\n\r\n",
            b"GET /a HTTP/1.1\r\nA: 1\r\n folded\r\n\r\n",
            b"GET /a HTTP/1.1\r\nA: \xff\r\n\r\n",
            b"GET /a HTTP/1.1\r\nA: 1\r\n",
        ] {
            assert!(
                matches!(head(bad), Err(ReadError::Malformed(_))),
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
        let many = format!(
            "GET / HTTP/1.1\r\n{}\r\n",
            "A: 1\r\n".repeat(MAX_HEADERS + 1)
        );
        assert!(matches!(
            head(many.as_bytes()),
            Err(ReadError::HeadersTooLarge)
        ));
        let fits = format!("GET / HTTP/1.1\r\n{}\r\n", "A: 1\r\n".repeat(MAX_HEADERS));
        assert_eq!(
            head(fits.as_bytes()).unwrap().unwrap().headers.len(),
            MAX_HEADERS
        );
        assert!(head(b"").unwrap().is_none());
    }

    #[test]
    fn bad_chunked_framing_is_refused() {
        let body = |raw: &[u8]| read_body(&mut BufReader::new(raw), Framing::Chunked, 100);
        assert_eq!(
            body(b"A\r\n0123456789\r\n0\r\n\r\n").unwrap(),
            b"0123456789"
        );
        for bad in [
            &b"\r\nhi\r\n0\r\n\r\n"[..],
            b"2\nhi\r\n0\r\n\r\n",
            b"g\r\nhi\r\n0\r\n\r\n",
            b"2\r\nhiX\r\n0\r\n\r\n",
            b"2\r\nhi\r\n0\r\nbad trailer\r\n\r\n",
            b"2\r\nhi\r\n0\r\n",
            b"2\r\nh",
        ] {
            assert!(
                matches!(body(bad), Err(ReadError::Malformed(_))),
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
        assert!(matches!(
            body(b"ffffffffffffffff\r\n"),
            Err(ReadError::TooLarge { declared: None })
        ));
    }

    #[test]
    fn response_heads() {
        let raw = b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 201\r\nETag: \"x\"\r\n\r\n";
        let mut r = BufReader::new(&raw[..]);
        assert_eq!(read_response_head(&mut r).unwrap().unwrap().0, 100);
        let (status, headers) = read_response_head(&mut r).unwrap().unwrap();
        assert_eq!(
            (status, headers),
            (201, vec![("ETag".into(), "\"x\"".into())])
        );
        let mut bad = BufReader::new(&b"HTTP/1.1 2x0 OK\r\n\r\n"[..]);
        assert!(matches!(
            read_response_head(&mut bad),
            Err(ReadError::Malformed(_))
        ));
    }
}
