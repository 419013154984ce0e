//! A one-connection-per-answer HTTP server on loopback for tests: it records each request (head and body) and
//! answers from a script, so the bytes a source puts on the wire can be checked without a network.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::thread::JoinHandle;

/// Status, extra headers, body.
pub type Answer = (u16, Vec<(&'static str, String)>, String);

/// Serves `answers` (full HTTP responses without `Content-Length`/`Connection`, which are added) in order;
/// the handle yields the requests received.
pub fn serve(answers: Vec<Answer>) -> (String, JoinHandle<Vec<String>>) {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let base = format!("http://{}", l.local_addr().unwrap());
    let h = std::thread::spawn(move || {
        let mut seen = Vec::new();
        for (status, headers, body) in answers {
            let (s, _) = l.accept().unwrap();
            let mut r = BufReader::new(s.try_clone().unwrap());
            let mut head = String::new();
            let mut len = 0usize;
            loop {
                let mut line = String::new();
                r.read_line(&mut line).unwrap();
                if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
                    len = v.trim().parse().unwrap();
                }
                head.push_str(&line);
                if line == "\r\n" || line.is_empty() {
                    break;
                }
            }
            let mut b = vec![0; len];
            r.read_exact(&mut b).unwrap();
            seen.push(head + &String::from_utf8(b).unwrap());
            let mut out = format!(
                "HTTP/1.1 {status} X\r\nContent-Length: {}\r\nConnection: close\r\n",
                body.len()
            );
            for (k, v) in headers {
                out.push_str(&format!("{k}: {v}\r\n"));
            }
            out.push_str("\r\n");
            out.push_str(&body);
            let mut s = s;
            s.write_all(out.as_bytes()).unwrap();
        }
        seen
    });
    (base, h)
}
