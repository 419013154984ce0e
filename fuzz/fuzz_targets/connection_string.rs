//! `parse_connection_string` on any UTF-8 text: it must not panic, and no error message may carry the value of an
//! `Application Key` (any spelling the parser accepts: `AppKey`, `application_key`, ...).
//!
//! The leak check is differential, so that a value which also appears in the message for an honest reason (it is
//! given again as another keyword's value, or it is a word of the message's own text) is not reported: the input is
//! parsed a second time with that value overwritten by a filler character it does not contain. The
//! grammar and the parser's path are the same for both inputs (a key value is only checked for being non-empty), so
//! the message may contain the value more often in the first parse than in the second only if it was copied into it.
#![no_main]

use kusto_edge_core::auth::parse_connection_string;
use libfuzzer_sys::fuzz_target;

/// Shortest value checked: shorter ones occur in messages by chance ("true", "https").
const MIN_SECRET_LEN: usize = 8;

fuzz_target!(|data: &[u8]| {
    let Ok(s) = std::str::from_utf8(data) else {
        return;
    };
    let Err(e) = parse_connection_string(s) else {
        return;
    };
    for (span, value) in app_key_values(s) {
        if value.chars().count() < MIN_SECRET_LEN {
            continue;
        }
        let Some(filler) = ('a'..='z').chain('0'..='9').find(|c| !value.contains(*c)) else {
            continue;
        };
        let mut masked = String::with_capacity(s.len());
        masked.push_str(&s[..span.0]);
        masked.extend(s[span.0..span.1].chars().map(|_| filler));
        masked.push_str(&s[span.1..]);
        let e2 = parse_connection_string(&masked).expect_err("masking a key changed the outcome");
        let leaked = count(&e.message, &value);
        let honest = count(&e2.message, &value);
        assert!(
            leaked <= honest,
            "the Application Key {value:?} is in the error message {:?}",
            e.message
        );
    }
});

/// Occurrences, overlapping ones included.
fn count(hay: &str, needle: &str) -> usize {
    (0..hay.len())
        .filter(|&i| hay.is_char_boundary(i) && hay[i..].starts_with(needle))
        .count()
}

fn is_app_key(raw_key: &str) -> bool {
    // The parser's normalisation: case-insensitive, spaces and underscores ignored.
    let norm: String = raw_key
        .chars()
        .filter(|c| !c.is_whitespace() && *c != '_')
        .flat_map(char::to_lowercase)
        .collect();
    norm == "applicationkey" || norm == "appkey"
}

/// The byte span of the text of each `Application Key` value in `s` (inside the quotes when quoted) and the value
/// it stands for. Follows the grammar the module documents, element by element, up to the first malformed one.
fn app_key_values(s: &str) -> Vec<((usize, usize), String)> {
    let mut out = Vec::new();
    let b = s.as_bytes();
    let mut i = 0;
    while i < b.len() {
        let k_start = i;
        while i < b.len() && b[i] != b'=' && b[i] != b';' {
            i += 1;
        }
        let key = s[k_start..i].trim();
        if i >= b.len() || b[i] == b';' {
            i += 1;
            continue;
        }
        i += 1;
        while i < b.len() && b[i] == b' ' {
            i += 1;
        }
        if i < b.len() && (b[i] == b'"' || b[i] == b'\'') {
            let q = b[i];
            i += 1;
            let start = i;
            let mut v = String::new();
            let mut piece = i;
            loop {
                if i >= b.len() {
                    return out;
                }
                if b[i] == q {
                    v.push_str(&s[piece..i]);
                    if b.get(i + 1) == Some(&q) {
                        v.push(q as char);
                        i += 2;
                        piece = i;
                        continue;
                    }
                    break;
                }
                i += 1;
            }
            if is_app_key(key) {
                out.push(((start, i), v));
            }
            i += 1;
            while i < b.len() && b[i] == b' ' {
                i += 1;
            }
            if i < b.len() && b[i] != b';' {
                return out;
            }
        } else {
            let start = i;
            while i < b.len() && b[i] != b';' {
                i += 1;
            }
            let raw = &s[start..i];
            let v = raw.trim();
            if is_app_key(key) && !v.is_empty() {
                let at = start + (raw.len() - raw.trim_start().len());
                out.push(((at, at + v.len()), v.to_owned()));
            }
        }
        i += 1;
    }
    out
}
