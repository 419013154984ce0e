//! Base64, standard (Basic auth, `x5c`, SAS keys, queue messages) and URL-safe without padding (JWT
//! segments): thin names over the `data-encoding` crate's encodings, which refuse non-canonical text (wrong
//! padding, non-zero leftover bits). Not the `base64` crate: the library encodes with that one, and an oracle
//! that shares its encoder would pass a bug both have.

use data_encoding::{BASE64 as STANDARD, BASE64URL_NOPAD as URL_SAFE_NO_PAD};

/// Standard alphabet with `=` padding.
pub fn encode(data: &[u8]) -> String {
    STANDARD.encode(data)
}

/// Standard alphabet, padding required.
pub fn decode(text: &str) -> Option<Vec<u8>> {
    STANDARD.decode(text.as_bytes()).ok()
}

/// URL-safe alphabet, no padding (RFC 7515 `base64url`).
pub fn url_encode(data: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(data)
}

/// URL-safe alphabet; padding is refused, as JOSE requires.
pub fn url_decode(text: &str) -> Option<Vec<u8>> {
    URL_SAFE_NO_PAD.decode(text.as_bytes()).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_rfc4648_vectors() {
        for (plain, std) in [
            ("", ""),
            ("f", "Zg=="),
            ("fo", "Zm8="),
            ("foo", "Zm9v"),
            ("foob", "Zm9vYg=="),
            ("fooba", "Zm9vYmE="),
            ("foobar", "Zm9vYmFy"),
        ] {
            assert_eq!(encode(plain.as_bytes()), std);
            assert_eq!(decode(std).unwrap(), plain.as_bytes());
            let url = std.trim_end_matches('=');
            assert_eq!(url_encode(plain.as_bytes()), url);
            assert_eq!(url_decode(url).unwrap(), plain.as_bytes());
        }
        assert_eq!(url_encode(&[0xfb, 0xff]), "-_8");
        assert_eq!(url_decode("-_8").unwrap(), [0xfb, 0xff]);
    }

    #[test]
    fn refuses_bad_text() {
        assert!(url_decode("Zg==").is_none());
        assert!(url_decode("Z").is_none());
        assert!(url_decode("Zh").is_none(), "non-zero leftover bits");
        assert!(decode("Zg").is_none());
        assert!(decode("Zm9v!").is_none());
    }
}
