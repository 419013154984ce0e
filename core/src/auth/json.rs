//! The answers of token endpoints and the cloud metadata, read with the crate's one JSON reader
//! ([`crate::json`]): one document is walked and every scalar handed to a callback with its dotted path
//! (`AzureAD.LoginEndpoint`). No recursion beyond [`MAX_DEPTH`], no allocation beyond the strings it decodes, and
//! any malformed input is an `Err`, never a panic.

use crate::json::{unescape, Parser};

/// Deepest nesting accepted; the documents we read are two levels deep.
pub const MAX_DEPTH: usize = 16;

/// One scalar value.
#[derive(Debug, PartialEq)]
pub enum Scalar<'a> {
    /// A string, unescaped.
    Str(String),
    /// A number, as written (`3599`, `1.5e3`).
    Num(&'a str),
    /// `true` / `false`.
    Bool(bool),
    /// `null`.
    Null,
}

impl Scalar<'_> {
    /// A whole number from a number or a numeric string ("3599"), as v1 endpoints and IMDS write them.
    pub fn as_u64(&self) -> Option<u64> {
        let t = match self {
            Scalar::Num(n) => *n,
            Scalar::Str(s) => s.trim(),
            _ => return None,
        };
        if let Ok(n) = t.parse::<u64>() {
            return Some(n);
        }
        // A fractional number of seconds is rounded down; negative or non-finite is no number at all.
        let f: f64 = t.parse().ok()?;
        (f.is_finite() && (0.0..1e15).contains(&f)).then_some(f as u64)
    }
}

/// Why a document was refused.
#[derive(Debug, PartialEq, Eq)]
pub struct Malformed;

/// Walks `doc`, which must be one JSON object, calling `f(path, value)` for every scalar inside objects.
/// Array elements are checked but skipped (nothing we read is in an array). Strings are unescaped and checked
/// (UTF-8, escapes, surrogate pairs), numbers must parse, nesting stops at [`MAX_DEPTH`].
pub fn walk<'a>(doc: &'a [u8], mut f: impl FnMut(&str, Scalar<'a>)) -> Result<(), Malformed> {
    let mut p = Parser::bounded(doc, MAX_DEPTH as u32);
    if p.peek_byte() != Some(b'{') {
        return Err(Malformed);
    }
    let mut path = String::new();
    value(&mut p, &mut path, &mut f).ok_or(Malformed)?;
    if !p.at_end() {
        return Err(Malformed);
    }
    Ok(())
}

fn value<'a>(
    p: &mut Parser<'a>,
    path: &mut String,
    f: &mut dyn FnMut(&str, Scalar<'a>),
) -> Option<()> {
    match p.peek_byte()? {
        b'{' => p.object(|p, key| {
            let key = unescape(key)?;
            let base = path.len();
            if !path.is_empty() {
                path.push('.');
            }
            path.push_str(&key);
            value(p, path, f)?;
            path.truncate(base);
            Some(())
        }),
        b'[' => p.array(|p| value(p, path, &mut |_, _| {})),
        b'"' => {
            let s = p.text()?;
            f(path, Scalar::Str(s));
            Some(())
        }
        _ => {
            let v = match p.scalar()? {
                b"true" => Scalar::Bool(true),
                b"false" => Scalar::Bool(false),
                b"null" => Scalar::Null,
                tok => {
                    if !matches!(tok.first(), Some(b'-' | b'0'..=b'9')) {
                        return None;
                    }
                    let n = std::str::from_utf8(tok).ok()?;
                    n.parse::<f64>().ok()?;
                    Scalar::Num(n)
                }
            };
            f(path, v);
            Some(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn collect(doc: &str) -> Result<Vec<(String, String)>, Malformed> {
        let mut v = Vec::new();
        walk(doc.as_bytes(), |p, s| {
            v.push((p.to_owned(), format!("{s:?}")))
        })?;
        Ok(v)
    }

    #[test]
    fn reads_nested_paths_and_unescapes() {
        let v = collect(
            r#"{"a":"x\"y\u00e9\ud83d\ude00","AzureAD":{"LoginEndpoint":"https:\/\/l","Mfa":false},"n":3599,"arr":[1,{"z":2}],"nul":null}"#,
        )
        .unwrap();
        assert_eq!(v[0], ("a".into(), "Str(\"x\\\"yé😀\")".into()));
        assert_eq!(
            v[1],
            ("AzureAD.LoginEndpoint".into(), "Str(\"https://l\")".into())
        );
        assert_eq!(v[2], ("AzureAD.Mfa".into(), "Bool(false)".into()));
        assert_eq!(v[3], ("n".into(), "Num(\"3599\")".into()));
        assert_eq!(v[4], ("nul".into(), "Null".into()));
        assert_eq!(v.len(), 5);
    }

    #[test]
    fn garbage_is_refused_not_panicking() {
        for bad in [
            "",
            "[]",
            "{",
            "{\"a\"}",
            "{\"a\":}",
            "{\"a\":1,}",
            "{\"a\":\"\\x\"}",
            "{\"a\":\"\\ud800\"}",
            "{\"a\":tru}",
            "{\"a\":1} x",
            "{\"a\":\"\u{1}\"}",
            "{\"a\":\"unterminated}",
            "<html>",
            "{\"a\":-}",
            "{\"a\":.5}",
            "{\"a\":1e}",
            "{\"a\":truex}",
            "{\"a\":\"\\u+041\"}",
            "{\"a\\u0\":1}",
            "{\"a\":[1,]}",
        ] {
            assert_eq!(collect(bad), Err(Malformed), "{bad:?}");
        }
        let deep = "{\"a\":".repeat(100) + "1" + &"}".repeat(100);
        assert_eq!(collect(&deep), Err(Malformed));
        let deep_arr = "{\"a\":".to_owned() + &"[".repeat(10_000) + &"]".repeat(10_000) + "}";
        assert_eq!(collect(&deep_arr), Err(Malformed));
    }

    #[test]
    fn numbers_and_numeric_strings_read_as_u64() {
        assert_eq!(Scalar::Num("3599").as_u64(), Some(3599));
        assert_eq!(Scalar::Str("3599".into()).as_u64(), Some(3599));
        assert_eq!(Scalar::Num("3599.9").as_u64(), Some(3599));
        assert_eq!(Scalar::Num("-1").as_u64(), None);
        assert_eq!(Scalar::Str("soon".into()).as_u64(), None);
        assert_eq!(Scalar::Bool(true).as_u64(), None);
    }
}
