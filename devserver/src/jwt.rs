//! Compact JWTs: the client assertions of the certificate grant (RS256, checked against a registered
//! certificate) and the JWT-shaped strings this server hands out. Pure functions over bytes and a clock.

use rustls_pki_types::CertificateDer;
use serde_json::{Map, Value};

use crate::b64;

/// Skew allowed on `nbf`, as Entra ID allows.
pub const CLOCK_SKEW_SECS: i64 = 60;
/// Longest assertion lifetime (`exp` − `iat`) accepted.
pub const MAX_ASSERTION_LIFETIME_SECS: i64 = 3600;

/// `base64url(SHA-1(cert DER))`, the `x5t` header of an assertion signed with that certificate.
pub fn thumbprint(cert_der: &[u8]) -> String {
    let d = ring::digest::digest(&ring::digest::SHA1_FOR_LEGACY_USE_ONLY, cert_der);
    b64::url_encode(d.as_ref())
}

/// The three parts of a compact JWT, decoded.
#[derive(Debug, Clone)]
pub struct Parts {
    pub header: Map<String, Value>,
    pub claims: Map<String, Value>,
    /// `base64url(header) "." base64url(claims)`: the bytes that were signed.
    pub signing_input: String,
    pub signature: Vec<u8>,
}

/// Split and decode a compact JWT (header and claims must be JSON objects).
pub fn parse(jwt: &str) -> Result<Parts, String> {
    let mut it = jwt.split('.');
    let (Some(h), Some(c), Some(s), None) = (it.next(), it.next(), it.next(), it.next()) else {
        return Err("expected three dot-separated parts".into());
    };
    let object = |part: &str, what: &str| -> Result<Map<String, Value>, String> {
        let bytes = b64::url_decode(part).ok_or_else(|| format!("{what} is not base64url"))?;
        match serde_json::from_slice(&bytes) {
            Ok(Value::Object(m)) => Ok(m),
            _ => Err(format!("{what} is not a JSON object")),
        }
    };
    Ok(Parts {
        header: object(h, "header")?,
        claims: object(c, "payload")?,
        signing_input: format!("{h}.{c}"),
        signature: b64::url_decode(s).ok_or("signature is not base64url")?,
    })
}

/// Why an assertion was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AssertionError {
    Malformed(String),
    /// `alg` is not RS256 or `typ` is not JWT.
    Algorithm(String),
    /// `x5t` missing or not the registered certificate's thumbprint.
    UnknownKey(String),
    /// `x5c` present but its first certificate is not the registered one.
    CertificateChain,
    Audience(String),
    /// `iss` or `sub` is not the client id.
    Issuer(String),
    MissingClaim(&'static str),
    /// `nbf` in the future, `exp` in the past, or `exp` − `iat` too long.
    TimeRange(String),
    Signature,
}

/// What a valid assertion must match.
pub struct Expected<'a> {
    pub client_id: &'a str,
    /// DER of the certificate registered for the client.
    pub cert_der: &'a [u8],
    /// Accepted `aud` values (the token endpoint URL as the client may have spelled it).
    pub audiences: &'a [String],
    /// Unix seconds.
    pub now: i64,
}

fn str_claim<'a>(m: &'a Map<String, Value>, k: &'static str) -> Result<&'a str, AssertionError> {
    match m.get(k) {
        Some(Value::String(s)) if !s.is_empty() => Ok(s),
        _ => Err(AssertionError::MissingClaim(k)),
    }
}

fn time_claim(m: &Map<String, Value>, k: &'static str) -> Result<Option<i64>, AssertionError> {
    match m.get(k) {
        None => Ok(None),
        Some(v) => v
            .as_i64()
            .or_else(|| v.as_f64().map(|f| f as i64))
            .map(Some)
            .ok_or_else(|| AssertionError::Malformed(format!("claim '{k}' is not a number"))),
    }
}

/// Check a certificate-credential client assertion the way Entra ID does.
pub fn verify_assertion(jwt: &str, want: &Expected<'_>) -> Result<Parts, AssertionError> {
    let p = parse(jwt).map_err(AssertionError::Malformed)?;
    let alg = p.header.get("alg").and_then(Value::as_str).unwrap_or("");
    if alg != "RS256" {
        return Err(AssertionError::Algorithm(format!(
            "'{alg}' is not a supported signature algorithm"
        )));
    }
    if let Some(typ) = p.header.get("typ") {
        if typ.as_str() != Some("JWT") {
            return Err(AssertionError::Algorithm(format!(
                "typ {typ} is not \"JWT\""
            )));
        }
    }
    let registered = thumbprint(want.cert_der);
    match p.header.get("x5t").and_then(Value::as_str) {
        Some(t) if t == registered => {}
        Some(t) => return Err(AssertionError::UnknownKey(t.to_string())),
        None => return Err(AssertionError::UnknownKey(String::new())),
    }
    if let Some(x5c) = p.header.get("x5c") {
        let first = x5c
            .as_array()
            .and_then(|a| a.first())
            .and_then(Value::as_str)
            .and_then(b64::decode);
        if first.as_deref() != Some(want.cert_der) {
            return Err(AssertionError::CertificateChain);
        }
    }

    let c = &p.claims;
    let aud_ok = match c.get("aud") {
        Some(Value::String(a)) => want.audiences.iter().any(|w| w == a),
        Some(Value::Array(list)) => list
            .iter()
            .filter_map(Value::as_str)
            .any(|a| want.audiences.iter().any(|w| w == a)),
        _ => return Err(AssertionError::MissingClaim("aud")),
    };
    if !aud_ok {
        return Err(AssertionError::Audience(
            c.get("aud").map(Value::to_string).unwrap_or_default(),
        ));
    }
    for k in ["iss", "sub"] {
        let v = str_claim(c, k)?;
        if v != want.client_id {
            return Err(AssertionError::Issuer(format!("{k} '{v}'")));
        }
    }
    str_claim(c, "jti")?;
    let exp = time_claim(c, "exp")?.ok_or(AssertionError::MissingClaim("exp"))?;
    let nbf = time_claim(c, "nbf")?.ok_or(AssertionError::MissingClaim("nbf"))?;
    let iat = time_claim(c, "iat")?;
    if nbf > want.now + CLOCK_SKEW_SECS {
        return Err(AssertionError::TimeRange(format!(
            "nbf {nbf} is after now {} + {CLOCK_SKEW_SECS} s",
            want.now
        )));
    }
    if exp <= want.now {
        return Err(AssertionError::TimeRange(format!(
            "exp {exp} is not after now {}",
            want.now
        )));
    }
    let start = iat.unwrap_or(nbf);
    if exp - start > MAX_ASSERTION_LIFETIME_SECS {
        return Err(AssertionError::TimeRange(format!(
            "lifetime {} s is over {MAX_ASSERTION_LIFETIME_SECS} s",
            exp - start
        )));
    }

    let der = CertificateDer::from(want.cert_der);
    let cert = webpki::EndEntityCert::try_from(&der)
        .map_err(|e| AssertionError::Malformed(format!("registered certificate: {e:?}")))?;
    cert.verify_signature(
        webpki::ring::RSA_PKCS1_2048_8192_SHA256,
        p.signing_input.as_bytes(),
        &p.signature,
    )
    .map_err(|_| AssertionError::Signature)?;
    Ok(p)
}

/// A JWT-shaped string: real header and claims, random bytes where the signature goes.
/// Nothing verifies its signature; the server recognises the whole string.
pub fn unsigned_lookalike(claims: &Value, random_signature: &[u8]) -> String {
    let header = serde_json::json!({"alg": "RS256", "typ": "JWT", "kid": "kusto-devserver"});
    format!(
        "{}.{}.{}",
        b64::url_encode(header.to_string().as_bytes()),
        b64::url_encode(claims.to_string().as_bytes()),
        b64::url_encode(random_signature)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_refuses_non_jwts() {
        assert!(parse("a.b").is_err());
        assert!(parse("a.b.c.d").is_err());
        assert!(
            parse("e30.e30.").is_ok(),
            "{{}}.{{}}. with an empty signature parses"
        );
        assert!(parse("WzFd.e30.").is_err(), "header [1] is not an object");
    }

    #[test]
    fn thumbprint_is_base64url_sha1() {
        // SHA-1("abc") = a9993e36 4706816a ba3e2571 7850c26c 9cd0d89d
        assert_eq!(thumbprint(b"abc"), "qZk-NkcGgWq6PiVxeFDCbJzQ2J0");
    }
}
