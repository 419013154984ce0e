//! A small, bounded JSON reader for the answers of token endpoints and the cloud metadata: it walks one document
//! and hands every scalar to a callback with its dotted path (`AzureAD.LoginEndpoint`). No recursion beyond
//! [`MAX_DEPTH`], no allocation beyond the strings it decodes, and any malformed input is an `Err`, never a panic.

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
/// Array elements are skipped (nothing we read is in an array).
pub fn walk<'a>(doc: &'a [u8], mut f: impl FnMut(&str, Scalar<'a>)) -> Result<(), Malformed> {
    let mut p = Reader { b: doc, i: 0 };
    p.ws();
    if p.peek() != Some(b'{') {
        return Err(Malformed);
    }
    let mut path = String::new();
    p.object(&mut path, 0, &mut f)?;
    p.ws();
    if p.i != p.b.len() {
        return Err(Malformed);
    }
    Ok(())
}

struct Reader<'a> {
    b: &'a [u8],
    i: usize,
}

impl<'a> Reader<'a> {
    fn ws(&mut self) {
        while matches!(self.peek(), Some(b' ' | b'\t' | b'\n' | b'\r')) {
            self.i += 1;
        }
    }

    fn peek(&self) -> Option<u8> {
        self.b.get(self.i).copied()
    }

    fn eat(&mut self, c: u8) -> Result<(), Malformed> {
        self.ws();
        if self.peek() == Some(c) {
            self.i += 1;
            Ok(())
        } else {
            Err(Malformed)
        }
    }

    fn object(
        &mut self,
        path: &mut String,
        depth: usize,
        f: &mut dyn FnMut(&str, Scalar<'a>),
    ) -> Result<(), Malformed> {
        if depth >= MAX_DEPTH {
            return Err(Malformed);
        }
        self.eat(b'{')?;
        self.ws();
        if self.peek() == Some(b'}') {
            self.i += 1;
            return Ok(());
        }
        loop {
            self.ws();
            let key = self.string()?;
            self.eat(b':')?;
            let base = path.len();
            if !path.is_empty() {
                path.push('.');
            }
            path.push_str(&key);
            self.value(path, depth + 1, f)?;
            path.truncate(base);
            self.ws();
            match self.peek() {
                Some(b',') => self.i += 1,
                Some(b'}') => {
                    self.i += 1;
                    return Ok(());
                }
                _ => return Err(Malformed),
            }
        }
    }

    /// Arrays are checked for validity; their elements are not reported.
    fn array(&mut self, path: &mut String, depth: usize) -> Result<(), Malformed> {
        if depth >= MAX_DEPTH {
            return Err(Malformed);
        }
        self.eat(b'[')?;
        self.ws();
        if self.peek() == Some(b']') {
            self.i += 1;
            return Ok(());
        }
        let mut ignore = |_: &str, _: Scalar<'a>| {};
        loop {
            self.value(path, depth + 1, &mut ignore)?;
            self.ws();
            match self.peek() {
                Some(b',') => self.i += 1,
                Some(b']') => {
                    self.i += 1;
                    return Ok(());
                }
                _ => return Err(Malformed),
            }
        }
    }

    fn value(
        &mut self,
        path: &mut String,
        depth: usize,
        f: &mut dyn FnMut(&str, Scalar<'a>),
    ) -> Result<(), Malformed> {
        self.ws();
        match self.peek().ok_or(Malformed)? {
            b'{' => self.object(path, depth, f),
            b'[' => self.array(path, depth),
            b'"' => {
                let s = self.string()?;
                f(path, Scalar::Str(s));
                Ok(())
            }
            b't' => self.literal(b"true").map(|_| f(path, Scalar::Bool(true))),
            b'f' => self.literal(b"false").map(|_| f(path, Scalar::Bool(false))),
            b'n' => self.literal(b"null").map(|_| f(path, Scalar::Null)),
            b'-' | b'0'..=b'9' => {
                let start = self.i;
                while matches!(
                    self.peek(),
                    Some(b'-' | b'+' | b'.' | b'e' | b'E' | b'0'..=b'9')
                ) {
                    self.i += 1;
                }
                let n = std::str::from_utf8(&self.b[start..self.i]).map_err(|_| Malformed)?;
                n.parse::<f64>().map_err(|_| Malformed)?;
                f(path, Scalar::Num(n));
                Ok(())
            }
            _ => Err(Malformed),
        }
    }

    fn literal(&mut self, word: &[u8]) -> Result<(), Malformed> {
        if self.b[self.i..].starts_with(word) {
            self.i += word.len();
            Ok(())
        } else {
            Err(Malformed)
        }
    }

    fn hex4(&mut self) -> Result<u32, Malformed> {
        let h = self.b.get(self.i..self.i + 4).ok_or(Malformed)?;
        let s = std::str::from_utf8(h).map_err(|_| Malformed)?;
        let v = u32::from_str_radix(s, 16).map_err(|_| Malformed)?;
        self.i += 4;
        Ok(v)
    }

    fn string(&mut self) -> Result<String, Malformed> {
        if self.peek() != Some(b'"') {
            return Err(Malformed);
        }
        self.i += 1;
        let start = self.i;
        // Sized once from the raw length, which the unescaped text never exceeds: a token is never copied by a
        // reallocation that would leave an unzeroed copy behind.
        let end = self.b[start..]
            .iter()
            .enumerate()
            .scan(false, |escaped, (k, &c)| {
                let r = (k, c, *escaped);
                *escaped = !*escaped && c == b'\\';
                Some(r)
            })
            .find(|&(_, c, escaped)| c == b'"' && !escaped)
            .map(|(k, _, _)| start + k)
            .ok_or(Malformed)?;
        let mut out = String::with_capacity(end - start);
        while self.i < end {
            let c = self.b[self.i];
            if c < 0x20 {
                return Err(Malformed);
            }
            if c != b'\\' {
                // Copy a run of plain bytes at once; UTF-8 is checked on the run.
                let run_end = self.b[self.i..end]
                    .iter()
                    .position(|&c| c == b'\\' || c < 0x20)
                    .map_or(end, |k| self.i + k);
                out.push_str(std::str::from_utf8(&self.b[self.i..run_end]).map_err(|_| Malformed)?);
                self.i = run_end;
                continue;
            }
            self.i += 1;
            let e = self.peek().ok_or(Malformed)?;
            self.i += 1;
            match e {
                b'"' => out.push('"'),
                b'\\' => out.push('\\'),
                b'/' => out.push('/'),
                b'b' => out.push('\u{8}'),
                b'f' => out.push('\u{c}'),
                b'n' => out.push('\n'),
                b'r' => out.push('\r'),
                b't' => out.push('\t'),
                b'u' => {
                    let hi = self.hex4()?;
                    let cp = if (0xd800..0xdc00).contains(&hi) {
                        if self.b.get(self.i..self.i + 2) != Some(b"\\u") {
                            return Err(Malformed);
                        }
                        self.i += 2;
                        let lo = self.hex4()?;
                        if !(0xdc00..0xe000).contains(&lo) {
                            return Err(Malformed);
                        }
                        0x10000 + ((hi - 0xd800) << 10) + (lo - 0xdc00)
                    } else {
                        hi
                    };
                    out.push(char::from_u32(cp).ok_or(Malformed)?);
                }
                _ => return Err(Malformed),
            }
        }
        self.i = end + 1;
        Ok(out)
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
