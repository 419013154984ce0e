//! CA certificates: the PEM the configuration takes (`tls.ca_file`, a CA in memory) and the trust store a
//! transport is built with. A leaf module, so that the configuration can check a PEM when it is set and the
//! transport can build from it without either knowing the other.

use ureq::tls::Certificate;

use crate::error::{Error, ErrorKind};

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

/// The certificates to trust: Mozilla's roots compiled into the library when `bundled`, plus those in `ca_pem`
/// (none when it is empty).
pub fn trust_anchors(bundled: bool, ca_pem: &[u8]) -> Result<Vec<Certificate<'static>>, Error> {
    let mut roots: Vec<Certificate<'static>> = Vec::new();
    if bundled {
        roots.extend(
            webpki_root_certs::TLS_SERVER_ROOT_CERTS
                .iter()
                .map(|c| Certificate::from_der(c.as_ref())),
        );
    }
    if !ca_pem.is_empty() {
        roots.extend(parse_ca_pem(ca_pem)?);
    }
    Ok(roots)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fixture(name: &str) -> Vec<u8> {
        std::fs::read(
            concat!(env!("CARGO_MANIFEST_DIR"), "/../devserver/fixtures/").to_owned() + name,
        )
        .unwrap()
    }

    #[test]
    fn a_pem_needs_a_certificate_and_must_parse() {
        assert_eq!(parse_ca_pem(&fixture("client-cert.pem")).unwrap().len(), 1);
        let e = parse_ca_pem(b"").unwrap_err();
        assert_eq!(e.kind, ErrorKind::TlsConfig);
        assert!(e.message.contains("no CERTIFICATE"), "{}", e.message);
        // A key alone is PEM but no certificate.
        let e = parse_ca_pem(&fixture("client-key-pkcs8.pem")).unwrap_err();
        assert!(e.message.contains("no CERTIFICATE"), "{}", e.message);
        let e = parse_ca_pem(b"-----BEGIN CERTIFICATE-----\n!!!!\n-----END CERTIFICATE-----\n")
            .unwrap_err();
        assert_eq!(e.kind, ErrorKind::TlsConfig);
    }

    #[test]
    fn the_trust_store_is_the_bundle_plus_the_pem() {
        let bundled = trust_anchors(true, b"").unwrap().len();
        assert!(bundled > 100, "{bundled}");
        assert_eq!(trust_anchors(false, b"").unwrap().len(), 0);
        let pem = fixture("client-cert.pem");
        assert_eq!(trust_anchors(false, &pem).unwrap().len(), 1);
        assert_eq!(trust_anchors(true, &pem).unwrap().len(), bundled + 1);
        assert!(trust_anchors(true, b"garbage").is_err());
    }
}
