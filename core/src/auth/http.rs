//! The little HTTP authentication needs, over the client's own `ureq::Agent`: a form POST and a GET, each with a
//! bounded body, the two response headers we read, and the rule on plain http. A request without an answer is
//! described by the transport's [`TransportError`].
//!
//! Plain http is refused except to loopback hosts (the Azure Arc agent, local test endpoints) and to the link-local
//! IMDS address 169.254.169.254, which are plain http by design and never leave the machine. Those two are also
//! never sent through a proxy: a proxy could not reach them, and must not see their tokens.

use std::net::{IpAddr, Ipv4Addr};

use crate::error::{Error, ErrorKind};
/// The host of a URL and whether it is https: the transport's rule, which refuses `user:password@`.
pub use crate::transport::split_url;
use crate::transport::TransportError;

pub use crate::secret::SecretBytes;
use crate::secret::SecretString;

/// Most of a response body read; an answer from a token endpoint is a few KiB.
pub const MAX_BODY_BYTES: usize = 64 * 1024;
/// Most of a header value kept.
const MAX_HEADER_BYTES: usize = 1024;

/// The link-local address of the Azure Instance Metadata Service.
pub const IMDS_ADDR: Ipv4Addr = Ipv4Addr::new(169, 254, 169, 254);

/// What came back.
pub struct Reply {
    /// HTTP status.
    pub status: u16,
    /// `WWW-Authenticate`, for the Azure Arc challenge.
    pub www_authenticate: Option<String>,
    /// `Retry-After`, as sent.
    pub retry_after: Option<String>,
    /// The body, at most [`MAX_BODY_BYTES`]; zeroed when dropped because it may hold a token.
    pub body: SecretBytes,
    /// True when the body was longer than [`MAX_BODY_BYTES`] and cut.
    pub truncated: bool,
}

/// Where a URL points, as far as the transport rules care.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target {
    /// https to anywhere.
    Https,
    /// http to a loopback host.
    PlainLoopback,
    /// http to the IMDS address.
    PlainImds,
}

impl Target {
    fn is_local(self) -> bool {
        !matches!(self, Target::Https)
    }
}

pub use crate::wire::is_loopback_host;

/// Checks a URL a token or a credential will travel over. `what` names the config key for the message.
pub fn check_url(url: &str, what: &str) -> Result<Target, Error> {
    // A URL with user info may carry a password: it is not echoed.
    let url_shown = if url.contains('@') { "***" } else { url };
    let (https, host) = split_url(url).ok_or_else(|| {
        Error::new(
            ErrorKind::ConfigInvalidValue,
            format!("{what} '{url_shown}' is not a URL: give https://host[:port]/path"),
        )
    })?;
    if https {
        return Ok(Target::Https);
    }
    if is_loopback_host(host) {
        return Ok(Target::PlainLoopback);
    }
    if host.parse::<IpAddr>().ok() == Some(IpAddr::V4(IMDS_ADDR)) {
        return Ok(Target::PlainImds);
    }
    Err(Error::new(
        ErrorKind::InsecureTransport,
        format!("{what} '{url}' is plain http to a host that is not loopback: credentials and tokens only travel over https (plain http is allowed to loopback and to IMDS at 169.254.169.254)"),
    ))
}

/// A form POST. The body is built by the caller inside a [`SecretString`] because it carries the client secret or
/// assertion.
pub fn post_form(agent: &ureq::Agent, url: &str, form: &SecretString) -> Result<Reply, Error> {
    let target = check_url(url, "token endpoint")?;
    let req = agent
        .post(url)
        .header("Content-Type", "application/x-www-form-urlencoded")
        .header("Accept", "application/json");
    let req = configure(req.config(), target).build();
    let resp = req
        .send(form.expose().as_bytes())
        .map_err(|e| network_error(url, &e))?;
    Ok(read_reply(resp))
}

/// A GET with extra headers. Header values that are secrets (Arc's `Authorization`) are passed by reference and
/// copied only into the request.
pub fn get(agent: &ureq::Agent, url: &str, headers: &[(&str, &str)]) -> Result<Reply, Error> {
    let target = check_url(url, "endpoint")?;
    let mut req = agent.get(url).header("Accept", "application/json");
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let req = configure(req.config(), target).build();
    let resp = req.call().map_err(|e| network_error(url, &e))?;
    Ok(read_reply(resp))
}

/// Per-request settings that must hold whatever the agent says: statuses come back as answers (we classify them),
/// redirects are not followed (a token endpoint that redirects is misconfigured, and following could carry the
/// form elsewhere), and local endpoints bypass the proxy.
fn configure<B>(
    c: ureq::config::ConfigBuilder<ureq::typestate::RequestScope<B>>,
    target: Target,
) -> ureq::config::ConfigBuilder<ureq::typestate::RequestScope<B>> {
    let c = c
        .http_status_as_error(false)
        .max_redirects(0)
        .max_redirects_will_error(false)
        .https_only(false);
    if target.is_local() {
        c.proxy(None)
    } else {
        c
    }
}

fn header(resp: &ureq::http::Response<ureq::Body>, name: &str) -> Option<String> {
    let v = resp.headers().get(name)?.to_str().ok()?;
    let mut end = v.len().min(MAX_HEADER_BYTES);
    while !v.is_char_boundary(end) {
        end -= 1;
    }
    Some(v[..end].to_owned())
}

fn read_reply(mut resp: ureq::http::Response<ureq::Body>) -> Reply {
    let status = resp.status().as_u16();
    let www_authenticate = header(&resp, "www-authenticate");
    let retry_after = header(&resp, "retry-after");
    // Sized once, at the bound: the answer (a token) is never copied by a reallocation that would leave an
    // unzeroed copy behind, and a body cut short is parsed for what it has.
    let mut body = SecretBytes(vec![0; MAX_BODY_BYTES]);
    let read = crate::transport::body::read_into(&mut resp.body_mut().as_reader(), &mut body.0);
    body.0.truncate(read.len);
    Reply {
        status,
        www_authenticate,
        retry_after,
        body,
        truncated: read.cut,
    }
}

/// A request that got no answer: always transient (the network, DNS, a timeout, a certificate the trust store or
/// the clock may yet accept), with the host and the transport's words for what failed in the message.
fn network_error(url: &str, e: &ureq::Error) -> Error {
    let host = split_url(url).map(|(_, h)| h).unwrap_or("?");
    Error::new(
        ErrorKind::TransientFailure,
        format!("no answer from '{host}': {}", TransportError::from_ureq(e)),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_http_only_to_loopback_and_imds() {
        assert_eq!(
            check_url("https://login.microsoftonline.com/t/oauth2/v2.0/token", "x").unwrap(),
            Target::Https
        );
        assert_eq!(
            check_url("http://127.0.0.1:8080/t", "x").unwrap(),
            Target::PlainLoopback
        );
        assert_eq!(
            check_url("http://localhost:40342/metadata", "x").unwrap(),
            Target::PlainLoopback
        );
        assert_eq!(
            check_url("http://[::1]:1/x", "x").unwrap(),
            Target::PlainLoopback
        );
        assert_eq!(
            check_url("http://169.254.169.254/metadata/identity/oauth2/token", "x").unwrap(),
            Target::PlainImds
        );
        for bad in [
            "http://login.microsoftonline.com/t",
            "http://169.254.169.253/x",
            "http://localhost.evil.com/x",
            "http://x.localhost:8080/token",
        ] {
            assert_eq!(
                check_url(bad, "x").unwrap_err().kind,
                ErrorKind::InsecureTransport,
                "{bad}"
            );
        }
        for bad in [
            "ftp://x",
            "login.microsoftonline.com",
            "https://",
            "https://user:pw@host/",
            "http://127.0.0.1@evil.com/x",
        ] {
            assert_eq!(
                check_url(bad, "x").unwrap_err().kind,
                ErrorKind::ConfigInvalidValue,
                "{bad}"
            );
        }
    }

    #[test]
    fn no_answer_names_the_host_and_what_failed() {
        // Nothing listens on a port that was just freed.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let url = format!(
            "http://127.0.0.1:{port}/metadata/identity/oauth2/token?api-version=2018-02-01"
        );
        let e = get(&ureq::Agent::new_with_defaults(), &url, &[])
            .err()
            .unwrap();
        assert_eq!(e.kind, ErrorKind::TransientFailure);
        assert_eq!(e.message, "no answer from '127.0.0.1': connection refused");
        let e = network_error(
            "https://login.microsoftonline.com/t/oauth2/v2.0/token",
            &ureq::Error::Rustls(rustls::Error::InvalidCertificate(
                rustls::CertificateError::UnknownIssuer,
            )),
        );
        assert_eq!(e.kind, ErrorKind::TransientFailure);
        assert_eq!(
            e.message,
            "no answer from 'login.microsoftonline.com': the server's TLS certificate is not trusted (unknown issuer)"
        );
    }
}
