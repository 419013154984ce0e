//! Why a request got no HTTP answer, in the transport's own terms: a kind to decide on and a short detail for a
//! person. What a failure means for whoever sent the request (retry, keep, tell an operator) is the caller's
//! business; `crate::network` does it for Kusto delivery.
//!
//! The detail comes from ureq, rustls and the operating system, so it is scrubbed on the way in: no URL query
//! (where SAS tokens live), no user:password of a URL, no control characters, and it is bounded.

use std::fmt;

/// Bytes of detail a [`TransportError`] keeps; longer text is cut.
pub const DETAIL_BYTES: usize = 192;

/// What went wrong, in the classes a caller decides on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TransportErrorKind {
    /// The host name does not exist (NXDOMAIN, no address): a configuration problem. Behind a CONNECT proxy
    /// only the proxy's own name is looked up here.
    NameNotFound,
    /// The resolver could not answer now (EAI_AGAIN): the network or the DNS server is away.
    DnsTryAgain,
    /// Nothing listens there: the connection was refused.
    ConnectionRefused,
    /// The connection could not be set up for another reason.
    Connect,
    /// The peer closed or reset the connection before the answer was read.
    Closed,
    /// A bound of the transport ran out; the detail names the phase when known.
    Timeout,
    /// The server's TLS certificate was refused; the detail is rustls' own name for why.
    Certificate(CertificateProblem),
    /// The server did not speak TLS where TLS was expected (plain HTTP on an https port, say).
    NotTls,
    /// Any other TLS failure (an alert, a handshake that did not agree).
    Tls,
    /// The HTTP CONNECT proxy did not open the tunnel; `status` is its answer when it gave one.
    Proxy {
        /// The proxy's HTTP status, e.g. 403 or 407.
        status: Option<u16>,
    },
    /// Any other I/O error.
    Io,
    /// The server's answer broke HTTP (or a bound on its head).
    Protocol,
    /// The request could not be made: the URL or a header is malformed.
    BadRequest,
    /// Plain `http://` where the transport's rules refuse it, or a credential that would travel over it.
    InsecureUrl,
}

/// Why a server's certificate was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CertificateProblem {
    /// Not signed by a CA in the trust store.
    UnknownIssuer,
    /// Past its validity.
    Expired,
    /// Before its validity: often the device's clock.
    NotValidYet,
    /// Issued for another name.
    NotValidForName,
    /// Revoked by its issuer.
    Revoked,
    /// Anything else (bad signature, wrong usage, ...).
    Other,
}

/// A request that got no HTTP answer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TransportError {
    /// What went wrong.
    pub kind: TransportErrorKind,
    /// ureq's, rustls' or the system's words for it, scrubbed (see the module); may be empty. Fixed-size, so that
    /// a failure never allocates.
    pub detail: heapless::String<DETAIL_BYTES>,
}

impl TransportError {
    /// An error of `kind` with `detail` scrubbed into it.
    pub fn new(kind: TransportErrorKind, detail: &str) -> TransportError {
        TransportError {
            kind,
            detail: scrub(detail),
        }
    }

    fn with(kind: TransportErrorKind, detail: fmt::Arguments<'_>) -> TransportError {
        /// Keeps what fits (whole characters) and drops the rest, where a `heapless::String` would refuse a piece
        /// that does not fit whole.
        struct Cut(heapless::String<{ 2 * DETAIL_BYTES }>);
        impl fmt::Write for Cut {
            fn write_str(&mut self, s: &str) -> fmt::Result {
                for c in s.chars() {
                    if self.0.push(c).is_err() {
                        break;
                    }
                }
                Ok(())
            }
        }
        let mut raw = Cut(heapless::String::new());
        let _ = fmt::Write::write_fmt(&mut raw, detail);
        TransportError::new(kind, &raw.0)
    }

    /// Classifies a ureq error.
    pub fn from_ureq(e: &ureq::Error) -> TransportError {
        use TransportErrorKind as K;
        match rustls_error(e) {
            Some(rustls::Error::InvalidCertificate(c)) => {
                return TransportError::with(
                    K::Certificate(certificate_problem(c)),
                    format_args!("{c:?}"),
                )
            }
            Some(rustls::Error::InvalidMessage(m)) => {
                return TransportError::with(K::NotTls, format_args!("{m:?}"))
            }
            _ => {}
        }
        match e {
            ureq::Error::HostNotFound => TransportError::new(K::NameNotFound, ""),
            ureq::Error::Io(io) => {
                use std::io::ErrorKind as I;
                // A failing getaddrinfo reaches ureq as the standard library's I/O error, whose kind is not
                // public: its text is the only mark ("failed to lookup address information: <gai_strerror>",
                // glibc and musl alike).
                let text = io.to_string();
                if let Some(why) = text.strip_prefix("failed to lookup address information") {
                    let why = why.trim_start_matches(':').trim();
                    let lower = why.to_ascii_lowercase();
                    // "Temporary failure in name resolution" (EAI_AGAIN) on glibc and musl alike.
                    let kind = if lower.contains("temporary failure") || lower.contains("try again")
                    {
                        K::DnsTryAgain
                    } else {
                        K::NameNotFound
                    };
                    return TransportError::new(kind, why);
                }
                let kind = match io.kind() {
                    _ if rustls_error(e).is_some() => K::Tls,
                    I::ConnectionRefused => K::ConnectionRefused,
                    I::UnexpectedEof
                    | I::ConnectionReset
                    | I::ConnectionAborted
                    | I::BrokenPipe => K::Closed,
                    I::TimedOut | I::WouldBlock => K::Timeout,
                    _ => K::Io,
                };
                match kind {
                    // The kind says it all; the system's words ("Connection refused (os error 111)") add nothing.
                    K::ConnectionRefused | K::Closed | K::Timeout => TransportError::new(kind, ""),
                    _ => TransportError::new(kind, &text),
                }
            }
            ureq::Error::Timeout(t) => TransportError::with(K::Timeout, format_args!("{t}")),
            ureq::Error::ConnectionFailed => TransportError::new(K::Connect, ""),
            ureq::Error::ConnectProxyFailed(reason) => TransportError::new(
                K::Proxy {
                    status: proxy_status(reason),
                },
                reason,
            ),
            ureq::Error::Rustls(_) | ureq::Error::Tls(_) | ureq::Error::TlsRequired => {
                TransportError::with(K::Tls, format_args!("{e}"))
            }
            ureq::Error::Http(_) | ureq::Error::BadUri(_) | ureq::Error::RequireHttpsOnly(_) => {
                TransportError::with(K::BadRequest, format_args!("{e}"))
            }
            ureq::Error::Protocol(_)
            | ureq::Error::LargeResponseHeader(..)
            | ureq::Error::BodyExceedsLimit(_)
            | ureq::Error::StatusCode(_)
            | ureq::Error::TooManyRedirects
            | ureq::Error::RedirectFailed => TransportError::with(K::Protocol, format_args!("{e}")),
            other => TransportError::with(K::Io, format_args!("{other}")),
        }
    }
}

impl fmt::Display for TransportError {
    /// A short sentence without the host (the caller knows which it asked): "connection refused",
    /// "timed out (connect)", "the server's TLS certificate is not trusted (unknown issuer)".
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        use CertificateProblem as C;
        use TransportErrorKind as K;
        let what = match self.kind {
            K::NameNotFound => "host name does not resolve",
            K::DnsTryAgain => "temporary DNS failure",
            K::ConnectionRefused => "connection refused",
            K::Connect => "connection failed",
            K::Closed => "the connection was closed before the answer",
            K::Timeout => "timed out",
            K::Certificate(C::UnknownIssuer) => {
                "the server's TLS certificate is not trusted (unknown issuer)"
            }
            K::Certificate(C::Expired) => "the server's TLS certificate has expired",
            K::Certificate(C::NotValidYet) => {
                "the server's TLS certificate is not valid yet (check this device's clock)"
            }
            K::Certificate(C::NotValidForName) => {
                "the server's TLS certificate is not for this host name"
            }
            K::Certificate(C::Revoked) => "the server's TLS certificate is revoked",
            K::Certificate(C::Other) => "the server's TLS certificate is not accepted",
            K::NotTls => "the server did not answer in TLS",
            K::Proxy { .. } => "the proxy refused the tunnel",
            // The detail is the whole story.
            K::Tls | K::Io | K::Protocol | K::BadRequest | K::InsecureUrl
                if !self.detail.is_empty() =>
            {
                return f.write_str(&self.detail)
            }
            K::Tls => "TLS failed",
            K::Io => "network error",
            K::Protocol => "the answer broke HTTP",
            K::BadRequest => "the request could not be made",
            K::InsecureUrl => "plain http is not allowed there",
        };
        f.write_str(what)?;
        match self.kind {
            // Their detail repeats the sentence in rustls' words.
            K::Certificate(
                C::UnknownIssuer | C::Expired | C::NotValidYet | C::NotValidForName | C::Revoked,
            ) => Ok(()),
            _ if self.detail.is_empty() => Ok(()),
            _ => write!(f, " ({})", self.detail),
        }
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

fn certificate_problem(c: &rustls::CertificateError) -> CertificateProblem {
    use rustls::CertificateError as C;
    match c {
        C::UnknownIssuer => CertificateProblem::UnknownIssuer,
        C::Expired | C::ExpiredContext { .. } => CertificateProblem::Expired,
        C::NotValidYet | C::NotValidYetContext { .. } => CertificateProblem::NotValidYet,
        C::NotValidForName | C::NotValidForNameContext { .. } => {
            CertificateProblem::NotValidForName
        }
        C::Revoked => CertificateProblem::Revoked,
        _ => CertificateProblem::Other,
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

/// `text` as one bounded line without what must not be shown: a URL's query (from `?` to the end of the word)
/// becomes `?...`, a URL's `user:password@` becomes `***@`, control characters go, whitespace runs become one
/// space.
fn scrub(text: &str) -> heapless::String<DETAIL_BYTES> {
    let mut out = heapless::String::new();
    for word in text.split_whitespace() {
        if !out.is_empty() && out.push(' ').is_err() {
            break;
        }
        // A '?' that ends a word is a question mark; one with more after it starts a query.
        let (mut word, tail) = match word.find('?') {
            Some(q) if q + 1 < word.len() => (&word[..q], "?..."),
            _ => (word, ""),
        };
        if let Some(s) = word.find("://") {
            let authority = &word[s + 3..];
            let authority = &authority[..authority.find('/').unwrap_or(authority.len())];
            if let Some(at) = authority.rfind('@') {
                if push_str(&mut out, &word[..s + 3]).is_err() || push_str(&mut out, "***").is_err()
                {
                    return out;
                }
                word = &word[s + 3 + at..];
            }
        }
        if push_str(&mut out, word).is_err() || push_str(&mut out, tail).is_err() {
            break;
        }
    }
    out
}

/// Pushes what fits of `s` (whole characters, control characters left out); `Err` once the detail is full.
fn push_str(out: &mut heapless::String<DETAIL_BYTES>, s: &str) -> Result<(), ()> {
    for c in s.chars().filter(|c| !c.is_control()) {
        out.push(c)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io;
    use TransportErrorKind as K;

    fn gai(detail: &str) -> ureq::Error {
        ureq::Error::Io(io::Error::other(format!(
            "failed to lookup address information: {detail}"
        )))
    }

    fn kind(e: ureq::Error) -> (TransportErrorKind, String) {
        let t = TransportError::from_ureq(&e);
        (t.kind, t.detail.as_str().to_owned())
    }

    #[test]
    fn every_ureq_failure_gets_its_kind() {
        use rustls::CertificateError as C;
        let cert = |c: C| ureq::Error::Rustls(rustls::Error::InvalidCertificate(c));
        let wrapped =
            |r: rustls::Error| ureq::Error::Io(io::Error::new(io::ErrorKind::InvalidData, r));
        let io = |k: io::ErrorKind| ureq::Error::Io(io::Error::from(k));
        let table: Vec<(ureq::Error, TransportErrorKind, &str)> = vec![
            (ureq::Error::HostNotFound, K::NameNotFound, ""),
            (
                gai("Name or service not known"),
                K::NameNotFound,
                "Name or service not known",
            ), // glibc
            (
                gai("Name does not resolve"),
                K::NameNotFound,
                "Name does not resolve",
            ), // musl
            (
                gai("No address associated with hostname"),
                K::NameNotFound,
                "No address associated with hostname",
            ),
            (
                gai("Temporary failure in name resolution"),
                K::DnsTryAgain,
                "Temporary failure in name resolution",
            ),
            (gai("Try again"), K::DnsTryAgain, "Try again"),
            (
                io(io::ErrorKind::ConnectionRefused),
                K::ConnectionRefused,
                "",
            ),
            (io(io::ErrorKind::ConnectionReset), K::Closed, ""),
            (io(io::ErrorKind::ConnectionAborted), K::Closed, ""),
            (io(io::ErrorKind::UnexpectedEof), K::Closed, ""),
            (io(io::ErrorKind::BrokenPipe), K::Closed, ""),
            (io(io::ErrorKind::TimedOut), K::Timeout, ""),
            (io(io::ErrorKind::WouldBlock), K::Timeout, ""),
            (
                ureq::Error::Timeout(ureq::Timeout::Connect),
                K::Timeout,
                "connect",
            ),
            (
                ureq::Error::Timeout(ureq::Timeout::RecvResponse),
                K::Timeout,
                "receive response",
            ),
            (ureq::Error::ConnectionFailed, K::Connect, ""),
            (
                ureq::Error::Io(io::Error::new(
                    io::ErrorKind::PermissionDenied,
                    "no route for you",
                )),
                K::Io,
                "no route for you",
            ),
            (
                cert(C::UnknownIssuer),
                K::Certificate(CertificateProblem::UnknownIssuer),
                "UnknownIssuer",
            ),
            (
                wrapped(rustls::Error::InvalidCertificate(C::UnknownIssuer)),
                K::Certificate(CertificateProblem::UnknownIssuer),
                "UnknownIssuer",
            ),
            (
                cert(C::Expired),
                K::Certificate(CertificateProblem::Expired),
                "Expired",
            ),
            (
                cert(C::NotValidYet),
                K::Certificate(CertificateProblem::NotValidYet),
                "NotValidYet",
            ),
            (
                cert(C::NotValidForName),
                K::Certificate(CertificateProblem::NotValidForName),
                "NotValidForName",
            ),
            (
                cert(C::Revoked),
                K::Certificate(CertificateProblem::Revoked),
                "Revoked",
            ),
            (
                cert(C::BadSignature),
                K::Certificate(CertificateProblem::Other),
                "BadSignature",
            ),
            (
                wrapped(rustls::Error::InvalidMessage(
                    rustls::InvalidMessage::InvalidContentType,
                )),
                K::NotTls,
                "InvalidContentType",
            ),
            (
                wrapped(rustls::Error::AlertReceived(
                    rustls::AlertDescription::HandshakeFailure,
                )),
                K::Tls,
                "received fatal alert: HandshakeFailure",
            ),
            (
                ureq::Error::Rustls(rustls::Error::AlertReceived(
                    rustls::AlertDescription::HandshakeFailure,
                )),
                K::Tls,
                "rustls: received fatal alert: HandshakeFailure",
            ),
            (
                ureq::Error::TlsRequired,
                K::Tls,
                "TLS required, but transport is unsecured",
            ),
            (
                ureq::Error::ConnectProxyFailed("proxy server responded 403/Forbidden".into()),
                K::Proxy { status: Some(403) },
                "proxy server responded 403/Forbidden",
            ),
            (
                ureq::Error::ConnectProxyFailed(
                    "proxy server responded 407/Proxy Authentication Required".into(),
                ),
                K::Proxy { status: Some(407) },
                "proxy server responded 407/Proxy Authentication Required",
            ),
            (
                ureq::Error::ConnectProxyFailed("proxy server did not respond".into()),
                K::Proxy { status: None },
                "proxy server did not respond",
            ),
            (
                ureq::Error::BadUri("no host".into()),
                K::BadRequest,
                "bad uri: no host",
            ),
            (
                ureq::Error::LargeResponseHeader(70000, 16384),
                K::Protocol,
                "response header is too big: 70000 > 16384",
            ),
            (ureq::Error::BodyStalled, K::Io, "body data reading stalled"),
        ];
        for (e, want, detail) in table {
            let shown = format!("{e:?}");
            assert_eq!(kind(e), (want, detail.to_owned()), "{shown}");
        }
    }

    #[test]
    fn query_strings_and_passwords_never_reach_the_detail() {
        let e = ureq::Error::BadUri(
            "https://acct.blob.core.windows.net/c/b?sv=2022&sig=S3CR3T%3D bad".into(),
        );
        let t = TransportError::from_ureq(&e);
        assert_eq!(
            t.detail.as_str(),
            "bad uri: https://acct.blob.core.windows.net/c/b?... bad"
        );
        let t = TransportError::new(
            K::Io,
            "via http://gw:S3CR3T@proxy:3128/x?y=1 and https://h/p?a and what?",
        );
        assert_eq!(
            t.detail.as_str(),
            "via http://***@proxy:3128/x?... and https://h/p?... and what?"
        );
        assert!(!format!("{t} {t:?}").contains("S3CR3T"));
        // Control characters go, whitespace runs become one space, the length is bounded at a character.
        assert_eq!(scrub("a\r\n\tb\u{7}c").as_str(), "a bc");
        let long = "é".repeat(DETAIL_BYTES);
        let d = scrub(&long);
        assert!(
            d.len() <= DETAIL_BYTES && d.len() >= DETAIL_BYTES - 1,
            "{}",
            d.len()
        );
        let t = TransportError::with(K::Io, format_args!("{}", "x".repeat(10 * DETAIL_BYTES)));
        assert_eq!(t.detail.len(), DETAIL_BYTES);
    }

    #[test]
    fn display_is_a_short_sentence() {
        let cases = [
            (K::NameNotFound, "", "host name does not resolve"),
            (
                K::NameNotFound,
                "Name or service not known",
                "host name does not resolve (Name or service not known)",
            ),
            (K::DnsTryAgain, "", "temporary DNS failure"),
            (K::ConnectionRefused, "", "connection refused"),
            (K::Connect, "", "connection failed"),
            (K::Closed, "", "the connection was closed before the answer"),
            (K::Timeout, "", "timed out"),
            (K::Timeout, "connect", "timed out (connect)"),
            (
                K::Certificate(CertificateProblem::UnknownIssuer),
                "UnknownIssuer",
                "the server's TLS certificate is not trusted (unknown issuer)",
            ),
            (
                K::Certificate(CertificateProblem::Expired),
                "Expired",
                "the server's TLS certificate has expired",
            ),
            (
                K::Certificate(CertificateProblem::NotValidYet),
                "NotValidYet",
                "the server's TLS certificate is not valid yet (check this device's clock)",
            ),
            (
                K::Certificate(CertificateProblem::NotValidForName),
                "NotValidForName",
                "the server's TLS certificate is not for this host name",
            ),
            (
                K::Certificate(CertificateProblem::Revoked),
                "Revoked",
                "the server's TLS certificate is revoked",
            ),
            (
                K::Certificate(CertificateProblem::Other),
                "BadSignature",
                "the server's TLS certificate is not accepted (BadSignature)",
            ),
            (
                K::NotTls,
                "InvalidContentType",
                "the server did not answer in TLS (InvalidContentType)",
            ),
            (
                K::Proxy { status: Some(403) },
                "proxy server responded 403/Forbidden",
                "the proxy refused the tunnel (proxy server responded 403/Forbidden)",
            ),
            (
                K::Tls,
                "received fatal alert: HandshakeFailure",
                "received fatal alert: HandshakeFailure",
            ),
            (K::Tls, "", "TLS failed"),
            (K::Io, "", "network error"),
            (K::Protocol, "", "the answer broke HTTP"),
            (K::BadRequest, "", "the request could not be made"),
            (K::InsecureUrl, "", "plain http is not allowed there"),
            (K::InsecureUrl, "use https", "use https"),
        ];
        for (kind, detail, want) in cases {
            assert_eq!(
                TransportError::new(kind, detail).to_string(),
                want,
                "{kind:?}"
            );
        }
    }
}
