//! A small HTTP proxy for connectivity tests: `CONNECT host:port` tunnels (how clients reach
//! https:// endpoints through a corporate proxy) and absolute-URI forwarding (how they reach
//! http:// ones), optionally behind `Proxy-Authorization: Basic`. It only ever connects to
//! loopback targets, so a test can never make it reach out of the machine.
//!
//! One thread per client connection (two while a tunnel relays), at most [`MAX_CONNECTIONS`],
//! every read bounded by a timeout, every forwarded body by [`MAX_WIRE_BYTES`].

use std::collections::HashMap;
use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use crate::http::{self, Request, Response};
use crate::{b64, MAX_CONNECTIONS, MAX_WIRE_BYTES};

/// The realm of the `407` challenge.
pub const REALM: &str = "kusto-edge test proxy";

/// How a [`ConnectProxy`] behaves.
#[derive(Clone, Debug)]
pub struct ProxyConfig {
    /// Where to listen. Default `127.0.0.1:0`.
    pub bind: SocketAddr,
    /// `Some((user, password))`: require `Proxy-Authorization: Basic base64(user:password)`.
    pub credentials: Option<(String, String)>,
    /// Longest wait to connect to a target. Default 5 s.
    pub connect_timeout: Duration,
    /// A tunnel or forward with no bytes either way for this long is closed. Default 30 s.
    pub idle_timeout: Duration,
    /// Log one line per request to stderr.
    pub verbose: bool,
}

impl Default for ProxyConfig {
    fn default() -> Self {
        ProxyConfig {
            bind: SocketAddr::from(([127, 0, 0, 1], 0)),
            credentials: None,
            connect_timeout: Duration::from_secs(5),
            idle_timeout: Duration::from_secs(30),
            verbose: false,
        }
    }
}

struct Shared {
    cfg: ProxyConfig,
    stopping: AtomicBool,
    /// Every socket of a live connection (client, and target once connected), to close on stop.
    conns: Mutex<HashMap<u64, Vec<TcpStream>>>,
    handles: Mutex<Vec<JoinHandle<()>>>,
    active: AtomicUsize,
    next_conn: AtomicU64,
    tunnels: AtomicUsize,
    forwarded: AtomicUsize,
    auth_failures: AtomicUsize,
    targets: Mutex<Vec<String>>,
    refused: Mutex<Vec<String>>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// A running proxy. Stops (closing every connection and joining every thread) on drop.
pub struct ConnectProxy {
    shared: Arc<Shared>,
    addr: SocketAddr,
    accept: Option<JoinHandle<()>>,
}

impl ConnectProxy {
    /// Bind and start serving in background threads.
    pub fn start(cfg: ProxyConfig) -> io::Result<ConnectProxy> {
        let listener = TcpListener::bind(cfg.bind)?;
        let addr = listener.local_addr()?;
        let shared = Arc::new(Shared {
            cfg,
            stopping: AtomicBool::new(false),
            conns: Mutex::new(HashMap::new()),
            handles: Mutex::new(Vec::new()),
            active: AtomicUsize::new(0),
            next_conn: AtomicU64::new(0),
            tunnels: AtomicUsize::new(0),
            forwarded: AtomicUsize::new(0),
            auth_failures: AtomicUsize::new(0),
            targets: Mutex::new(Vec::new()),
            refused: Mutex::new(Vec::new()),
        });
        let s2 = shared.clone();
        let accept = thread::Builder::new()
            .name("devproxy-accept".into())
            .spawn(move || accept_loop(s2, listener))?;
        Ok(ConnectProxy {
            shared,
            addr,
            accept: Some(accept),
        })
    }

    /// `http://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        match self.addr.ip() {
            IpAddr::V6(ip) if !ip.is_unspecified() => format!("http://[{ip}]:{}", self.addr.port()),
            IpAddr::V4(ip) if !ip.is_unspecified() => format!("http://{ip}:{}", self.addr.port()),
            _ => format!("http://127.0.0.1:{}", self.addr.port()),
        }
    }

    /// The bound address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `CONNECT` tunnels established (answered 200).
    pub fn tunnels(&self) -> usize {
        self.shared.tunnels.load(Ordering::SeqCst)
    }

    /// Absolute-URI requests forwarded to their target.
    pub fn forwarded(&self) -> usize {
        self.shared.forwarded.load(Ordering::SeqCst)
    }

    /// Requests answered 407 (missing or wrong credentials).
    pub fn auth_failures(&self) -> usize {
        self.shared.auth_failures.load(Ordering::SeqCst)
    }

    /// `host:port` of every tunnel or forward the proxy connected for (or tried to), in order.
    pub fn targets(&self) -> Vec<String> {
        lock(&self.shared.targets).clone()
    }

    /// `host:port` of every request refused with 403 (not loopback); nothing was connected.
    pub fn refused_targets(&self) -> Vec<String> {
        lock(&self.shared.refused).clone()
    }

    /// Stop serving: close every connection and join every thread.
    pub fn stop(self) {}
}

impl Drop for ConnectProxy {
    fn drop(&mut self) {
        let Some(accept) = self.accept.take() else {
            return;
        };
        self.shared.stopping.store(true, Ordering::SeqCst);
        http::wake_accept(self.addr);
        let _ = accept.join();
        for streams in lock(&self.shared.conns).values() {
            for s in streams {
                let _ = s.shutdown(Shutdown::Both);
            }
        }
        let handles = std::mem::take(&mut *lock(&self.shared.handles));
        for h in handles {
            let _ = h.join();
        }
    }
}

fn accept_loop(shared: Arc<Shared>, listener: TcpListener) {
    loop {
        let stream = match listener.accept() {
            Ok((s, _)) => s,
            Err(_) => {
                if shared.stopping.load(Ordering::SeqCst) {
                    return;
                }
                thread::sleep(Duration::from_millis(20));
                continue;
            }
        };
        if shared.stopping.load(Ordering::SeqCst) {
            return;
        }
        if shared.active.load(Ordering::SeqCst) >= MAX_CONNECTIONS {
            continue;
        }
        let id = shared.next_conn.fetch_add(1, Ordering::SeqCst);
        let Ok(registered) = stream.try_clone() else {
            continue;
        };
        lock(&shared.conns).insert(id, vec![registered]);
        shared.active.fetch_add(1, Ordering::SeqCst);
        let s2 = shared.clone();
        let spawned = thread::Builder::new()
            .name(format!("devproxy-conn-{id}"))
            .spawn(move || {
                let _ = serve(&s2, id, stream);
                lock(&s2.conns).remove(&id);
                s2.active.fetch_sub(1, Ordering::SeqCst);
            });
        match spawned {
            Ok(h) => {
                let mut hs = lock(&shared.handles);
                hs.retain(|h| !h.is_finished());
                hs.push(h);
            }
            Err(_) => {
                lock(&shared.conns).remove(&id);
                shared.active.fetch_sub(1, Ordering::SeqCst);
            }
        }
    }
}

/// Read a request line and headers whose target may be `host:port` or an absolute URI (parsed by
/// `httparse`, within the limits of [`http`]). `Ok(None)` when the client closed between requests.
fn read_head<R: BufRead>(r: &mut R) -> Result<Option<Request>, String> {
    match http::read_request_head(r) {
        Ok(req) => Ok(req),
        Err(http::ReadError::Closed) => Ok(None),
        Err(http::ReadError::HeadersTooLarge) => Err("header section too large".into()),
        Err(http::ReadError::Malformed(m)) => Err(m),
        Err(e) => Err(format!("{e:?}")),
    }
}

/// `host:port` (`[v6]:port` too) -> (host, port).
fn split_authority(a: &str, default_port: u16) -> Option<(String, u16)> {
    if let Some(rest) = a.strip_prefix('[') {
        let (host, after) = rest.split_once(']')?;
        let port = match after.strip_prefix(':') {
            Some(p) => p.parse().ok()?,
            None if after.is_empty() => default_port,
            None => return None,
        };
        return Some((host.to_string(), port));
    }
    match a.rsplit_once(':') {
        Some((h, p)) if !h.contains(':') => Some((h.to_string(), p.parse().ok()?)),
        Some(_) => None,
        None => Some((a.to_string(), default_port)),
    }
    .filter(|(h, _)| !h.is_empty())
}

/// The loopback addresses of a target; `None` for anything else (never resolved, never connected).
fn loopback_addrs(host: &str, port: u16) -> Option<Vec<SocketAddr>> {
    if host.eq_ignore_ascii_case("localhost") {
        return Some(vec![
            SocketAddr::from((Ipv4Addr::LOCALHOST, port)),
            SocketAddr::from((Ipv6Addr::LOCALHOST, port)),
        ]);
    }
    match host.parse::<IpAddr>() {
        Ok(ip) if ip.is_loopback() => Some(vec![SocketAddr::new(ip, port)]),
        _ => None,
    }
}

fn authorized(cfg: &ProxyConfig, req: &Request) -> bool {
    let Some((user, pass)) = &cfg.credentials else {
        return true;
    };
    let Some((scheme, cred)) = req
        .header("proxy-authorization")
        .and_then(|v| v.split_once(' '))
    else {
        return false;
    };
    scheme.eq_ignore_ascii_case("basic")
        && b64::decode(cred.trim()).is_some_and(|d| d == format!("{user}:{pass}").as_bytes())
}

fn answer(w: &mut TcpStream, status: u16, text: &str, close: bool) -> io::Result<()> {
    let mut resp = Response::text(status, format!("{text}\n"));
    if status == 407 {
        resp = resp.header("Proxy-Authenticate", format!("Basic realm=\"{REALM}\""));
    }
    http::write_response(w, &resp, close)
}

fn serve(shared: &Arc<Shared>, id: u64, client: TcpStream) -> io::Result<()> {
    let cfg = &shared.cfg;
    client.set_read_timeout(Some(cfg.idle_timeout))?;
    client.set_write_timeout(Some(cfg.idle_timeout))?;
    let _ = client.set_nodelay(true);
    let mut w = client.try_clone()?;
    let mut r = BufReader::with_capacity(16 * 1024, client);
    loop {
        if shared.stopping.load(Ordering::SeqCst) {
            return Ok(());
        }
        let req = match read_head(&mut r) {
            Ok(Some(req)) => req,
            Ok(None) => return Ok(()),
            Err(e) => return answer(&mut w, 400, &format!("malformed request: {e}"), true),
        };
        let connect = req.method.eq_ignore_ascii_case("CONNECT");
        // For a forward, read the body now so the connection stays usable after a 407.
        let mut body = Vec::new();
        if !connect {
            let framing = match http::framing(&req, MAX_WIRE_BYTES) {
                Ok(f) => f,
                Err(e) => return answer(&mut w, 400, &format!("bad body framing: {e:?}"), true),
            };
            let expects = req
                .header("expect")
                .is_some_and(|v| v.eq_ignore_ascii_case("100-continue"));
            if framing != http::Framing::None && expects {
                if !authorized(cfg, &req) {
                    // The client waits before sending the body: refuse without reading it.
                    shared.auth_failures.fetch_add(1, Ordering::SeqCst);
                    return answer(&mut w, 407, "proxy authentication required", true);
                }
                w.write_all(b"HTTP/1.1 100 Continue\r\n\r\n")?;
            }
            body = match http::read_body(&mut r, framing, MAX_WIRE_BYTES) {
                Ok(b) => b,
                Err(e) => return answer(&mut w, 400, &format!("bad body: {e:?}"), true),
            };
        }
        let log = |what: &str| {
            if cfg.verbose {
                eprintln!("devproxy: {} {} -> {what}", req.method, req.path);
            }
        };
        if !authorized(cfg, &req) {
            shared.auth_failures.fetch_add(1, Ordering::SeqCst);
            log("407");
            answer(&mut w, 407, "proxy authentication required", false)?;
            continue;
        }
        let (authority, origin_form) = if connect {
            (req.path.clone(), String::new())
        } else {
            let Some(rest) = req.path.strip_prefix("http://") else {
                log("400");
                return answer(
                    &mut w,
                    400,
                    "only CONNECT host:port and http:// absolute URIs are proxied",
                    true,
                );
            };
            let (a, p) = match rest.find(['/', '?']) {
                Some(i) => (&rest[..i], rest[i..].to_string()),
                None => (rest, "/".to_string()),
            };
            let p = if p.starts_with('?') {
                format!("/{p}")
            } else {
                p
            };
            (a.to_string(), p)
        };
        let Some((host, port)) = split_authority(&authority, if connect { 443 } else { 80 }) else {
            log("400");
            return answer(&mut w, 400, &format!("bad target {authority:?}"), true);
        };
        let target = authority.clone();
        let Some(addrs) = loopback_addrs(&host, port) else {
            lock(&shared.refused).push(target);
            log("403");
            return answer(
                &mut w,
                403,
                &format!("this test proxy only connects to loopback targets, not {authority}"),
                true,
            );
        };
        lock(&shared.targets).push(target);
        let upstream = addrs
            .iter()
            .find_map(|a| TcpStream::connect_timeout(a, cfg.connect_timeout).ok());
        let Some(upstream) = upstream else {
            log("502");
            return answer(&mut w, 502, &format!("cannot connect to {authority}"), true);
        };
        upstream.set_write_timeout(Some(cfg.idle_timeout))?;
        let _ = upstream.set_nodelay(true);
        if let Some(list) = lock(&shared.conns).get_mut(&id) {
            list.push(upstream.try_clone()?);
        }
        let mut up = upstream.try_clone()?;
        if connect {
            shared.tunnels.fetch_add(1, Ordering::SeqCst);
            log("200 tunnel");
            w.write_all(b"HTTP/1.1 200 Connection established\r\n\r\n")?;
            w.flush()?;
            // Whatever the client sent after the CONNECT head belongs to the tunnel.
            let early = r.buffer().to_vec();
            up.write_all(&early)?;
            relay(shared, r.into_inner(), upstream);
        } else {
            shared.forwarded.fetch_add(1, Ordering::SeqCst);
            log("forward");
            let mut head = format!("{} {origin_form} {}\r\n", req.method, req.version);
            const HOP: [&str; 8] = [
                "proxy-authorization",
                "proxy-connection",
                "connection",
                "keep-alive",
                "expect",
                "transfer-encoding",
                "content-length",
                "te",
            ];
            for (k, v) in &req.headers {
                if !HOP.iter().any(|h| k.eq_ignore_ascii_case(h)) {
                    head.push_str(&format!("{k}: {v}\r\n"));
                }
            }
            if req.header("host").is_none() {
                head.push_str(&format!("Host: {authority}\r\n"));
            }
            if !body.is_empty() || !matches!(req.method.as_str(), "GET" | "HEAD") {
                head.push_str(&format!("Content-Length: {}\r\n", body.len()));
            }
            // One request per target connection: the answer ends where the target closes.
            head.push_str("Connection: close\r\n\r\n");
            let mut all = head.into_bytes();
            all.extend_from_slice(&body);
            up.write_all(&all)?;
            up.flush()?;
            let last = Arc::new(AtomicU64::new(0));
            let start = Instant::now();
            copy_until_idle(shared, &upstream, &w, &last, start);
            let _ = w.shutdown(Shutdown::Both);
            let _ = upstream.shutdown(Shutdown::Both);
        }
        return Ok(());
    }
}

/// Copy bytes from `from` to `to` until EOF, an error, stop, or the whole tunnel (both directions,
/// sharing `last` = milliseconds since `start` of the last byte) has been idle for the idle timeout.
fn copy_until_idle(
    shared: &Shared,
    from: &TcpStream,
    to: &TcpStream,
    last: &AtomicU64,
    start: Instant,
) {
    let idle = shared.cfg.idle_timeout;
    let _ = from.set_read_timeout(Some(idle.min(Duration::from_millis(250))));
    let mut buf = vec![0u8; 16 * 1024];
    let (mut from, mut to) = (from, to);
    loop {
        if shared.stopping.load(Ordering::SeqCst) {
            return;
        }
        match from.read(&mut buf) {
            Ok(0) => return,
            Ok(n) => {
                if to.write_all(&buf[..n]).is_err() {
                    return;
                }
                last.store(start.elapsed().as_millis() as u64, Ordering::SeqCst);
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) =>
            {
                let quiet = start.elapsed().as_millis() as u64 - last.load(Ordering::SeqCst);
                if quiet >= idle.as_millis() as u64 {
                    return;
                }
            }
            Err(_) => return,
        }
    }
}

/// Relay both ways until either side closes; then close both.
fn relay(shared: &Arc<Shared>, client: TcpStream, upstream: TcpStream) {
    let last = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let back = (|| Some((upstream.try_clone().ok()?, client.try_clone().ok()?)))();
    let Some((up2, client2)) = back else {
        return;
    };
    let (s2, l2) = (shared.clone(), last.clone());
    let down = thread::Builder::new()
        .name("devproxy-relay".into())
        .spawn(move || {
            copy_until_idle(&s2, &up2, &client2, &l2, start);
            let _ = client2.shutdown(Shutdown::Write);
        });
    copy_until_idle(shared, &client, &upstream, &last, start);
    let _ = upstream.shutdown(Shutdown::Write);
    if let Ok(h) = down {
        let _ = h.join();
    }
    let _ = client.shutdown(Shutdown::Both);
    let _ = upstream.shutdown(Shutdown::Both);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn authorities() {
        assert_eq!(
            split_authority("127.0.0.1:443", 80),
            Some(("127.0.0.1".into(), 443))
        );
        assert_eq!(
            split_authority("[::1]:8443", 80),
            Some(("::1".into(), 8443))
        );
        assert_eq!(split_authority("[::1]", 80), Some(("::1".into(), 80)));
        assert_eq!(
            split_authority("localhost", 80),
            Some(("localhost".into(), 80))
        );
        assert_eq!(split_authority("::1:443", 80), None);
        assert_eq!(split_authority(":443", 80), None);
        assert_eq!(split_authority("h:x", 80), None);
    }

    #[test]
    fn only_loopback() {
        assert!(loopback_addrs("127.0.0.1", 1).is_some());
        assert!(loopback_addrs("127.9.9.9", 1).is_some());
        assert!(loopback_addrs("::1", 1).is_some());
        assert!(loopback_addrs("LocalHost", 1).is_some());
        assert!(loopback_addrs("10.0.0.1", 1).is_none());
        assert!(loopback_addrs("example.com", 1).is_none());
        assert!(loopback_addrs("localhost.example.com", 1).is_none());
    }
}
