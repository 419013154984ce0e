//! Base64, standard (Basic auth, `x5c`) and URL-safe without padding (JWT segments).

const STD: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
const URL: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";

fn encode_with(data: &[u8], alphabet: &[u8; 64], pad: bool) -> String {
    let mut out = String::with_capacity(data.len().div_ceil(3) * 4);
    for chunk in data.chunks(3) {
        let b = [
            chunk[0],
            chunk.get(1).copied().unwrap_or(0),
            chunk.get(2).copied().unwrap_or(0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        let chars = chunk.len() + 1;
        for i in 0..4 {
            if i < chars {
                out.push(alphabet[((n >> (18 - 6 * i)) & 63) as usize] as char);
            } else if pad {
                out.push('=');
            }
        }
    }
    out
}

fn decode_with(text: &str, alphabet: &[u8; 64], padded: bool) -> Option<Vec<u8>> {
    let body = if padded {
        if !text.len().is_multiple_of(4) {
            return None;
        }
        text.trim_end_matches('=')
    } else {
        text
    };
    if text.len() - body.len() > 2 || body.len() % 4 == 1 {
        return None;
    }
    let mut out = Vec::with_capacity(body.len() * 3 / 4);
    let mut acc = 0u32;
    let mut bits = 0;
    for c in body.bytes() {
        let v = alphabet.iter().position(|&a| a == c)? as u32;
        acc = (acc << 6) | v;
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
            acc &= (1 << bits) - 1;
        }
    }
    // Leftover bits must be zero, so every text has exactly one decoding.
    (acc == 0).then_some(out)
}

/// Standard alphabet with `=` padding.
pub fn encode(data: &[u8]) -> String {
    encode_with(data, STD, true)
}

/// Standard alphabet, padding required.
pub fn decode(text: &str) -> Option<Vec<u8>> {
    decode_with(text, STD, true)
}

/// URL-safe alphabet, no padding (RFC 7515 `base64url`).
pub fn url_encode(data: &[u8]) -> String {
    encode_with(data, URL, false)
}

/// URL-safe alphabet; padding is refused, as JOSE requires.
pub fn url_decode(text: &str) -> Option<Vec<u8>> {
    decode_with(text, URL, false)
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
