//! The small encodings authentication needs, written here so the library pulls in no crate for them:
//! base64 (standard for `x5c`, URL-safe without padding for JWTs), form/query percent-encoding, JSON string
//! escaping, hexadecimal, and random UUIDs for `jti`.

use ring::rand::SecureRandom;

const STD: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
const URL: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";

fn base64(input: &[u8], alphabet: &[u8; 64], pad: bool, out: &mut String) {
    out.reserve(input.len().div_ceil(3) * 4);
    for chunk in input.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = (b[0] as u32) << 16 | (b[1] as u32) << 8 | b[2] as u32;
        let chars = chunk.len() + 1;
        for i in 0..4 {
            if i < chars {
                out.push(alphabet[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else if pad {
                out.push('=');
            }
        }
    }
}

/// Base64url without padding (RFC 7515 §2), as JWT segments and `x5t` are written.
pub fn base64url(input: &[u8]) -> String {
    let mut s = String::new();
    base64(input, URL, false, &mut s);
    s
}

/// Standard base64 with padding, as `x5c` certificates are written (RFC 7515 §4.1.6).
pub fn base64_std(input: &[u8]) -> String {
    let mut s = String::new();
    base64(input, STD, true, &mut s);
    s
}

/// Appends standard base64 with padding to `out` (no allocation when `out` has room): queue messages.
pub fn base64_std_into(input: &[u8], out: &mut String) {
    base64(input, STD, true, out);
}

/// Decodes standard base64 (padding optional, no whitespace) into `out` (cleared first): queue notifications.
/// `false` for anything else.
pub fn base64_std_decode(text: &str, out: &mut Vec<u8>) -> bool {
    out.clear();
    let t = text.trim_end_matches('=');
    if text.len() - t.len() > 2 || t.len() % 4 == 1 {
        return false;
    }
    let (mut acc, mut bits) = (0u32, 0u32);
    for &c in t.as_bytes() {
        let v = match STD.iter().position(|&a| a == c) {
            Some(v) => v as u32,
            None => return false,
        };
        acc = (acc << 6 | v) & 0xff_ffff;
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
        }
    }
    true
}

/// Appends `s` percent-encoded for an `application/x-www-form-urlencoded` body or a URL query value: everything
/// but the RFC 3986 unreserved characters is `%XX`, so a `+`, `&` or `=` in a secret can never change the form.
pub fn percent_encode_into(s: &str, out: &mut String) {
    for &b in s.as_bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(b as char);
        } else {
            const HEX: &[u8; 16] = b"0123456789ABCDEF";
            out.push('%');
            out.push(HEX[(b >> 4) as usize] as char);
            out.push(HEX[(b & 15) as usize] as char);
        }
    }
}

/// `s` percent-encoded (see [`percent_encode_into`]).
pub fn percent_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    percent_encode_into(s, &mut out);
    out
}

/// Appends `s` as a JSON string literal, quotes included.
pub fn json_string_into(s: &str, out: &mut String) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if (c as u32) < 0x20 => {
                out.push_str(&format!("\\u{:04x}", c as u32));
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

/// Lower-case hexadecimal.
pub fn hex(bytes: &[u8]) -> String {
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        s.push_str(&format!("{b:02x}"));
    }
    s
}

/// A random (version 4) UUID in its usual text form, for the `jti` of a client assertion: Entra ID refuses an
/// assertion whose `jti` it has seen before.
pub fn uuid_v4(rng: &dyn SecureRandom) -> Result<String, ring::error::Unspecified> {
    let mut b = [0u8; 16];
    rng.fill(&mut b)?;
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    let h = hex(&b);
    Ok(format!(
        "{}-{}-{}-{}-{}",
        &h[0..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..32]
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_decodes_what_it_encodes() {
        let mut out = Vec::new();
        for n in 0..40u8 {
            let data: Vec<u8> = (0..n).map(|i| i.wrapping_mul(37)).collect();
            assert!(base64_std_decode(&base64_std(&data), &mut out));
            assert_eq!(out, data);
        }
        assert!(!base64_std_decode("ab$c", &mut out));
        assert!(!base64_std_decode("a", &mut out));
        assert!(!base64_std_decode("QQ===", &mut out));
    }

    #[test]
    fn base64url_has_no_padding_and_url_alphabet() {
        // RFC 4648 test vectors, URL alphabet, padding removed.
        assert_eq!(base64url(b""), "");
        assert_eq!(base64url(b"f"), "Zg");
        assert_eq!(base64url(b"fo"), "Zm8");
        assert_eq!(base64url(b"foo"), "Zm9v");
        assert_eq!(base64url(b"foob"), "Zm9vYg");
        assert_eq!(base64url(b"fooba"), "Zm9vYmE");
        assert_eq!(base64url(b"foobar"), "Zm9vYmFy");
        assert_eq!(base64url(&[0xfb, 0xff, 0xfe]), "-__-");
        assert_eq!(base64_std(&[0xfb, 0xff, 0xfe]), "+//+");
        assert_eq!(base64_std(b"fo"), "Zm8=");
        assert_eq!(base64_std(b"f"), "Zg==");
    }

    #[test]
    fn form_encoding_escapes_everything_that_could_change_the_form() {
        assert_eq!(
            percent_encode("https://kusto.kusto.windows.net/.default"),
            "https%3A%2F%2Fkusto.kusto.windows.net%2F.default"
        );
        assert_eq!(percent_encode("a+b&c=d e~_-."), "a%2Bb%26c%3Dd%20e~_-.");
        assert_eq!(percent_encode("ü"), "%C3%BC");
    }

    #[test]
    fn json_strings_are_escaped() {
        let mut s = String::new();
        json_string_into("a\"b\\c\n", &mut s);
        assert_eq!(s, r#""a\"b\\c\u000a""#);
    }

    #[test]
    fn uuids_are_version_4_and_distinct() {
        let rng = ring::rand::SystemRandom::new();
        let a = uuid_v4(&rng).unwrap();
        let b = uuid_v4(&rng).unwrap();
        assert_ne!(a, b);
        assert_eq!(a.len(), 36);
        assert_eq!(&a[14..15], "4");
        assert!(matches!(&a[19..20], "8" | "9" | "a" | "b"));
    }
}
