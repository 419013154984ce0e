//! The certificate credential: an RSA key and its certificate, turned into the signed client assertion (a JWT)
//! Entra ID expects instead of a secret.
//!
//! Header `{"alg":"RS256","typ":"JWT","x5t":base64url(SHA-1(cert DER))}` (plus `x5c` when the public certificate
//! is sent, for subject-name/issuer authentication); claims `aud` = token endpoint URL, `iss` = `sub` = client id,
//! `jti` = random UUID, `nbf` = `iat` = now, `exp` = now + 600 s; RSASSA-PKCS1-v1_5 with SHA-256.

use std::fmt;
use std::sync::Arc;

use ring::digest;
use ring::rand::SystemRandom;
use ring::signature::{RsaKeyPair, RsaPublicKeyComponents, RSA_PKCS1_SHA256};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

use crate::error::{Error, ErrorKind};

use super::encoding::{hex, json_string_into};
use crate::secret::SecretString;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use base64::Engine as _;

/// How long an assertion is valid: the 10 minutes every SDK uses.
pub const ASSERTION_LIFETIME_SECS: u64 = 600;
/// 2024-01-01T00:00:00Z. A clock before this is a gateway that booted without RTC or NTP: an assertion signed with
/// it would be refused as expired, so we say so instead of asking Entra ID.
const CLOCK_SANE_AFTER: u64 = 1_704_067_200;

/// An RSA private key with its certificate, ready to sign client assertions.
#[derive(Clone)]
pub struct CertificateCredential {
    key: Arc<RsaKeyPair>,
    cert_der: Vec<u8>,
    sha1: [u8; 20],
    x5t: String,
    send_x5c: bool,
}

impl fmt::Debug for CertificateCredential {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The key never shows; the thumbprint is public and is what an operator compares with the portal.
        write!(
            f,
            "CertificateCredential(thumbprint={})",
            self.thumbprint_hex()
        )
    }
}

fn bad(what: &str, why: impl fmt::Display) -> Error {
    Error::new(ErrorKind::ConfigInvalidValue, format!("{what}: {why}"))
}

impl CertificateCredential {
    /// Loads the first certificate of `cert_pem` and the first private key of `key_pem` (PKCS#8 `BEGIN PRIVATE
    /// KEY` or PKCS#1 `BEGIN RSA PRIVATE KEY`; both may be the same file) and checks that they belong together.
    /// `cert_what` and `key_what` name where they came from, for messages. `send_x5c` adds the certificate to
    /// every assertion (needed for subject-name/issuer authentication).
    pub fn from_pem(
        cert_pem: &[u8],
        cert_what: &str,
        key_pem: &[u8],
        key_what: &str,
        send_x5c: bool,
    ) -> Result<Self, Error> {
        let cert = CertificateDer::from_pem_slice(cert_pem)
            .map_err(|e| bad(cert_what, format_args!("no PEM CERTIFICATE found ({e})")))?;
        let key = load_rsa_key(key_pem, key_what)?;
        let (n, e) = cert_rsa_components(cert.as_ref()).ok_or_else(|| {
            bad(
                cert_what,
                "the certificate does not hold an RSA public key (Entra ID certificate credentials are RSA)",
            )
        })?;
        let public: RsaPublicKeyComponents<Vec<u8>> = key.public().into();
        if strip(&public.n) != strip(n) || strip(&public.e) != strip(e) {
            return Err(bad(
                key_what,
                format_args!("this private key does not belong to the certificate in {cert_what}"),
            ));
        }
        let sha1 = digest::digest(&digest::SHA1_FOR_LEGACY_USE_ONLY, cert.as_ref());
        let mut sha = [0u8; 20];
        sha.copy_from_slice(sha1.as_ref());
        Ok(CertificateCredential {
            key: Arc::new(key),
            x5t: URL_SAFE_NO_PAD.encode(sha),
            sha1: sha,
            cert_der: cert.as_ref().to_vec(),
            send_x5c,
        })
    }

    /// `x5t`: base64url of the certificate's SHA-1 thumbprint.
    pub fn x5t(&self) -> &str {
        &self.x5t
    }

    /// The SHA-1 thumbprint in upper-case hex, as the Azure portal and `openssl x509 -fingerprint` show it.
    pub fn thumbprint_hex(&self) -> String {
        hex(&self.sha1).to_ascii_uppercase()
    }

    /// The certificate, DER.
    pub fn cert_der(&self) -> &[u8] {
        &self.cert_der
    }

    /// The JWT header, JSON.
    fn header_json(&self) -> String {
        let mut h = String::from(r#"{"alg":"RS256","typ":"JWT","x5t":"#);
        json_string_into(&self.x5t, &mut h);
        if self.send_x5c {
            h.push_str(r#","x5c":["#);
            json_string_into(&STANDARD.encode(&self.cert_der), &mut h);
            h.push(']');
        }
        h.push('}');
        h
    }

    /// A signed client assertion for `client_id` at token endpoint `aud`, issued at Unix time `now`.
    pub fn assertion(&self, aud: &str, client_id: &str, now: u64) -> Result<SecretString, Error> {
        if now < CLOCK_SANE_AFTER {
            return Err(Error::new(
                ErrorKind::TransientFailure,
                "the system clock is not set (it says before 2024): a client assertion needs the right time; waiting for NTP",
            ));
        }
        let rng = SystemRandom::new();
        let jti = crate::wire::uuid_text(&crate::wire::new_uuid(&rng)?);
        let mut claims = String::with_capacity(256);
        claims.push_str(r#"{"aud":"#);
        json_string_into(aud, &mut claims);
        claims.push_str(r#","iss":"#);
        json_string_into(client_id, &mut claims);
        claims.push_str(r#","sub":"#);
        json_string_into(client_id, &mut claims);
        claims.push_str(r#","jti":"#);
        json_string_into(&jti, &mut claims);
        claims.push_str(&format!(
            r#","nbf":{now},"iat":{now},"exp":{}}}"#,
            now + ASSERTION_LIFETIME_SECS
        ));
        let mut jwt = URL_SAFE_NO_PAD.encode(self.header_json());
        jwt.push('.');
        URL_SAFE_NO_PAD.encode_string(&claims, &mut jwt);
        let mut sig = vec![0u8; self.key.public().modulus_len()];
        self.key
            .sign(&RSA_PKCS1_SHA256, &rng, jwt.as_bytes(), &mut sig)
            .map_err(|_| Error::new(ErrorKind::Internal, "signing the client assertion failed"))?;
        jwt.push('.');
        URL_SAFE_NO_PAD.encode_string(&sig, &mut jwt);
        Ok(SecretString::new(jwt))
    }
}

fn strip(b: &[u8]) -> &[u8] {
    let i = b.iter().position(|&x| x != 0).unwrap_or(b.len());
    &b[i..]
}

/// Reads an RSA private key from PEM: PKCS#8 or PKCS#1. Anything else gets a message that says how to convert it.
fn load_rsa_key(pem: &[u8], what: &str) -> Result<RsaKeyPair, Error> {
    let text = String::from_utf8_lossy(pem);
    if text.contains("BEGIN ENCRYPTED PRIVATE KEY") || text.contains("Proc-Type: 4,ENCRYPTED") {
        return Err(bad(
            what,
            "the private key is encrypted: store it unencrypted with file permissions 0600 (openssl pkcs8 -topk8 -nocrypt)",
        ));
    }
    let key = PrivateKeyDer::from_pem_slice(pem).map_err(|_| {
        bad(
            what,
            "no PEM private key found (BEGIN PRIVATE KEY or BEGIN RSA PRIVATE KEY)",
        )
    })?;
    let parsed = match &key {
        PrivateKeyDer::Pkcs8(k) => RsaKeyPair::from_pkcs8(k.secret_pkcs8_der()),
        PrivateKeyDer::Pkcs1(k) => RsaKeyPair::from_der(k.secret_pkcs1_der()),
        _ => return Err(bad(
            what,
            "not an RSA key: Entra ID certificate credentials need an RSA key (2048 bits or more)",
        )),
    };
    parsed.map_err(|e| bad(what, format_args!("the RSA key is not usable ({e})")))
}

/// One DER element: (tag, contents, rest).
fn tlv(input: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let (&tag, rest) = input.split_first()?;
    let (&len0, rest) = rest.split_first()?;
    let (len, rest) = if len0 < 0x80 {
        (len0 as usize, rest)
    } else {
        let n = (len0 & 0x7f) as usize;
        if n == 0 || n > 4 || rest.len() < n {
            return None;
        }
        let len = rest[..n].iter().fold(0usize, |a, &b| (a << 8) | b as usize);
        (len, &rest[n..])
    };
    (rest.len() >= len).then(|| (tag, &rest[..len], &rest[len..]))
}

fn expect(input: &[u8], tag: u8) -> Option<(&[u8], &[u8])> {
    let (t, c, r) = tlv(input)?;
    (t == tag).then_some((c, r))
}

/// DER of OID 1.2.840.113549.1.1.1 (rsaEncryption).
const RSA_ENCRYPTION_OID: &[u8] = &[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x01];

/// The `RSAPublicKey` DER inside a certificate's subjectPublicKeyInfo, if the key is RSA.
pub(crate) fn cert_rsa_public_key(cert: &[u8]) -> Option<&[u8]> {
    const SEQ: u8 = 0x30;
    let (cert, _) = expect(cert, SEQ)?;
    let (tbs, _) = expect(cert, SEQ)?;
    let mut rest = tbs;
    if rest.first() == Some(&0xa0) {
        rest = tlv(rest)?.2; // [0] version
    }
    rest = expect(rest, 0x02)?.1; // serialNumber
    for _ in 0..4 {
        rest = expect(rest, SEQ)?.1; // signature, issuer, validity, subject
    }
    let (spki, _) = expect(rest, SEQ)?;
    let (alg, after_alg) = expect(spki, SEQ)?;
    let (oid, _) = expect(alg, 0x06)?;
    if oid != RSA_ENCRYPTION_OID {
        return None;
    }
    let (bits, _) = expect(after_alg, 0x03)?;
    let (&unused, key) = bits.split_first()?;
    (unused == 0).then_some(key)
}

/// Modulus and exponent of the certificate's RSA key.
fn cert_rsa_components(cert: &[u8]) -> Option<(&[u8], &[u8])> {
    let (seq, _) = expect(cert_rsa_public_key(cert)?, 0x30)?;
    let (n, rest) = expect(seq, 0x02)?;
    let (e, _) = expect(rest, 0x02)?;
    Some((n, e))
}

#[cfg(test)]
mod tests {
    use super::*;
    use ring::signature::{UnparsedPublicKey, RSA_PKCS1_2048_8192_SHA256};

    const CERT: &str = include_str!("../../../devserver/fixtures/client-cert.pem");
    const KEY8: &str = include_str!("../../../devserver/fixtures/client-key-pkcs8.pem");
    const KEY1: &str = include_str!("../../../devserver/fixtures/client-key-pkcs1.pem");
    /// `openssl x509 -in client-cert.pem -noout -fingerprint -sha1`
    const OPENSSL_SHA1: &str = "F4:15:D9:DF:43:C7:5B:84:AF:4D:AB:50:27:FD:EB:3A:8B:42:08:13";
    const NOW: u64 = 1_767_225_600; // 2026-01-01

    fn b64url_decode(s: &str) -> Vec<u8> {
        URL_SAFE_NO_PAD
            .decode(s)
            .expect("base64url without padding")
    }

    fn cred(key: &str) -> CertificateCredential {
        CertificateCredential::from_pem(
            CERT.as_bytes(),
            "auth.cert_file",
            key.as_bytes(),
            "auth.key_file",
            false,
        )
        .unwrap()
    }

    #[test]
    fn x5t_is_the_sha1_thumbprint_openssl_prints() {
        let c = cred(KEY8);
        let expected: Vec<u8> = OPENSSL_SHA1
            .split(':')
            .map(|h| u8::from_str_radix(h, 16).unwrap())
            .collect();
        let der = CertificateDer::from_pem_slice(CERT.as_bytes()).unwrap();
        let sha = digest::digest(&digest::SHA1_FOR_LEGACY_USE_ONLY, der.as_ref());
        assert_eq!(sha.as_ref(), &expected[..]);
        assert_eq!(c.x5t(), URL_SAFE_NO_PAD.encode(expected));
        assert_eq!(c.thumbprint_hex(), OPENSSL_SHA1.replace(':', ""));
        assert!(!c.x5t().contains('=') && !c.x5t().contains('+') && !c.x5t().contains('/'));
    }

    fn check_assertion(c: &CertificateCredential) {
        let aud = "https://login.microsoftonline.com/tenant-1/oauth2/v2.0/token";
        let jwt = c.assertion(aud, "client-1", NOW).unwrap();
        let parts: Vec<&str> = jwt.expose().split('.').collect();
        assert_eq!(parts.len(), 3);
        for p in &parts {
            assert!(!p.contains('='), "base64url without padding");
        }
        let header = String::from_utf8(b64url_decode(parts[0])).unwrap();
        assert_eq!(
            header,
            format!(r#"{{"alg":"RS256","typ":"JWT","x5t":"{}"}}"#, c.x5t())
        );
        let claims = String::from_utf8(b64url_decode(parts[1])).unwrap();
        let mut seen = Vec::new();
        crate::auth::json::walk(claims.as_bytes(), |k, v| {
            seen.push((k.to_owned(), format!("{v:?}")))
        })
        .unwrap();
        let get = |k: &str| {
            seen.iter()
                .find(|(p, _)| p == k)
                .map(|(_, v)| v.clone())
                .unwrap()
        };
        assert_eq!(get("aud"), format!("Str({aud:?})"));
        assert_eq!(get("iss"), "Str(\"client-1\")");
        assert_eq!(get("sub"), "Str(\"client-1\")");
        assert_eq!(get("nbf"), format!("Num(\"{NOW}\")"));
        assert_eq!(get("iat"), format!("Num(\"{NOW}\")"));
        assert_eq!(get("exp"), format!("Num(\"{}\")", NOW + 600));
        assert_eq!(get("jti").len(), "Str(\"\")".len() + 36);
        // The signature verifies with the certificate's own public key.
        let der = CertificateDer::from_pem_slice(CERT.as_bytes()).unwrap();
        let spki = cert_rsa_public_key(der.as_ref()).unwrap();
        let signed = format!("{}.{}", parts[0], parts[1]);
        UnparsedPublicKey::new(&RSA_PKCS1_2048_8192_SHA256, spki)
            .verify(signed.as_bytes(), &b64url_decode(parts[2]))
            .expect("signature verifies with the certificate's key");
        // And not for other content.
        assert!(UnparsedPublicKey::new(&RSA_PKCS1_2048_8192_SHA256, spki)
            .verify(b"other", &b64url_decode(parts[2]))
            .is_err());
    }

    #[test]
    fn assertion_with_pkcs8_key_verifies() {
        check_assertion(&cred(KEY8));
    }

    #[test]
    fn assertion_with_pkcs1_key_verifies() {
        check_assertion(&cred(KEY1));
    }

    #[test]
    fn every_assertion_has_a_new_jti() {
        let c = cred(KEY8);
        let a = c.assertion("aud", "c", NOW).unwrap();
        let b = c.assertion("aud", "c", NOW).unwrap();
        assert_ne!(a.expose().split('.').nth(1), b.expose().split('.').nth(1));
    }

    #[test]
    fn x5c_carries_the_certificate_when_asked() {
        let c = CertificateCredential::from_pem(CERT.as_bytes(), "c", KEY8.as_bytes(), "k", true)
            .unwrap();
        let jwt = c.assertion("aud", "c", NOW).unwrap();
        let header =
            String::from_utf8(b64url_decode(jwt.expose().split('.').next().unwrap())).unwrap();
        assert!(header.ends_with(&format!(
            r#","x5c":["{}"]}}"#,
            STANDARD.encode(c.cert_der())
        )));
    }

    #[test]
    fn combined_pem_file_works_for_both() {
        let both = format!("{KEY1}\n{CERT}");
        CertificateCredential::from_pem(both.as_bytes(), "f", both.as_bytes(), "f", false).unwrap();
    }

    #[test]
    fn bad_keys_and_certs_are_config_errors() {
        let e = CertificateCredential::from_pem(
            b"nothing",
            "auth.cert_file",
            KEY8.as_bytes(),
            "k",
            false,
        )
        .unwrap_err();
        assert_eq!(e.kind, ErrorKind::ConfigInvalidValue);
        assert!(e.message.contains("auth.cert_file"));
        let e = CertificateCredential::from_pem(
            CERT.as_bytes(),
            "c",
            CERT.as_bytes(),
            "auth.key_file",
            false,
        )
        .unwrap_err();
        assert!(e.message.contains("auth.key_file"));
        let enc =
            "-----BEGIN ENCRYPTED PRIVATE KEY-----\nAAAA\n-----END ENCRYPTED PRIVATE KEY-----\n";
        let e = CertificateCredential::from_pem(CERT.as_bytes(), "c", enc.as_bytes(), "k", false)
            .unwrap_err();
        assert!(e.message.contains("encrypted"));
    }

    #[test]
    fn a_key_that_does_not_match_the_certificate_is_refused() {
        // The fixture certificate with one byte of its modulus changed: a certificate of some other key.
        let der = CertificateDer::from_pem_slice(CERT.as_bytes())
            .unwrap()
            .as_ref()
            .to_vec();
        let (n, _) = cert_rsa_components(&der).unwrap();
        let at = n.as_ptr() as usize - der.as_ptr() as usize + n.len() / 2;
        let mut other = der.clone();
        other[at] ^= 0x55;
        let b64 = STANDARD.encode(&other);
        let lines: Vec<&str> = b64
            .as_bytes()
            .chunks(64)
            .map(|c| std::str::from_utf8(c).unwrap())
            .collect();
        let pem = format!(
            "-----BEGIN CERTIFICATE-----\n{}\n-----END CERTIFICATE-----\n",
            lines.join("\n")
        );
        let e = CertificateCredential::from_pem(
            pem.as_bytes(),
            "auth.cert_file",
            KEY8.as_bytes(),
            "auth.key_file",
            false,
        )
        .unwrap_err();
        assert_eq!(e.kind, ErrorKind::ConfigInvalidValue);
        assert!(e.message.contains("does not belong"), "{}", e.message);
    }

    #[test]
    fn an_unset_clock_is_reported_not_signed() {
        let e = cred(KEY8).assertion("aud", "c", 86_400).unwrap_err();
        assert_eq!(e.kind, ErrorKind::TransientFailure);
        assert!(e.message.contains("clock"));
    }

    #[test]
    fn debug_shows_the_thumbprint_only() {
        let s = format!("{:?}", cred(KEY8));
        assert!(s.contains("F415D9DF"));
        assert!(!s.contains("PRIVATE"));
    }
}
