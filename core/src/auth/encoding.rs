//! The two text encodings no linked crate offers: JSON string escaping (client assertions, queue messages) and
//! hexadecimal. Base64 and percent-encoding come from the `base64` and `percent-encoding` crates (linked through
//! ureq already, see [`crate::wire::percent_encode`]); UUIDs from [`crate::wire::new_uuid`].

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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_strings_are_escaped() {
        let mut s = String::new();
        json_string_into("a\"b\\c\n", &mut s);
        assert_eq!(s, r#""a\"b\\c\u000a""#);
    }
}
