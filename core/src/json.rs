//! The one bounded JSON reader: a cursor over a byte slice that walks objects and arrays without building them
//! in memory (Kusto's v1 data sets and errors, the DM's resource tables, token responses through
//! [`crate::auth`]'s path walker), and the one string unescaper. Depth and input are bounded; any malformation
//! answers `None`, never a panic.

/// Nesting accepted by [`Parser::new`]; [`Parser::bounded`] sets another limit.
const MAX_DEPTH: u32 = 32;

/// A cursor over one JSON document.
pub(crate) struct Parser<'a> {
    b: &'a [u8],
    i: usize,
    depth: u32,
    max_depth: u32,
}

impl<'a> Parser<'a> {
    pub fn new(b: &'a [u8]) -> Self {
        Self::bounded(b, MAX_DEPTH)
    }
    /// A parser that refuses objects and arrays nested deeper than `max_depth`.
    pub fn bounded(b: &'a [u8], max_depth: u32) -> Self {
        Parser {
            b,
            i: 0,
            depth: 0,
            max_depth,
        }
    }
    pub fn at(b: &'a [u8], i: usize) -> Self {
        Parser { i, ..Self::new(b) }
    }
    pub fn pos(&mut self) -> usize {
        self.ws();
        self.i
    }
    pub fn at_end(&mut self) -> bool {
        self.ws();
        self.i == self.b.len()
    }
    fn ws(&mut self) {
        while self.i < self.b.len() && matches!(self.b[self.i], b' ' | b'\t' | b'\r' | b'\n') {
            self.i += 1;
        }
    }
    fn peek(&mut self) -> Option<u8> {
        self.ws();
        self.b.get(self.i).copied()
    }
    /// The next byte after whitespace, not consumed.
    pub fn peek_byte(&mut self) -> Option<u8> {
        self.peek()
    }
    /// Consumes `c` (after whitespace), or answers `None`.
    pub fn eat(&mut self, c: u8) -> Option<()> {
        (self.peek()? == c).then(|| self.i += 1)
    }
    /// A string's raw bytes (escapes left as they are: keys we look for have none).
    pub fn string(&mut self) -> Option<&'a [u8]> {
        self.eat(b'"')?;
        let start = self.i;
        while self.i < self.b.len() {
            match self.b[self.i] {
                b'"' => {
                    self.i += 1;
                    return Some(&self.b[start..self.i - 1]);
                }
                b'\\' => self.i += 2,
                c if c < 0x20 => return None,
                _ => self.i += 1,
            }
        }
        None
    }
    /// A string, unescaped and checked (see [`unescape`]).
    pub fn text(&mut self) -> Option<String> {
        unescape(self.string()?)
    }
    /// A non-negative integer (or a numeric string, as some services send counts).
    pub fn number(&mut self) -> Option<u64> {
        if self.peek()? == b'"' {
            return std::str::from_utf8(self.string()?).ok()?.parse().ok();
        }
        let start = self.i;
        self.skip_scalar()?;
        std::str::from_utf8(&self.b[start..self.i])
            .ok()?
            .parse()
            .ok()
    }
    /// A literal (`true`, `false`, `null`) or a number, as written: the bytes up to the next delimiter, checked
    /// only for the characters they may hold.
    pub fn scalar(&mut self) -> Option<&'a [u8]> {
        self.ws();
        let start = self.i;
        self.skip_scalar()?;
        Some(&self.b[start..self.i])
    }
    fn skip_scalar(&mut self) -> Option<()> {
        let start = self.i;
        while self.i < self.b.len()
            && !matches!(
                self.b[self.i],
                b',' | b']' | b'}' | b' ' | b'\t' | b'\r' | b'\n'
            )
        {
            self.i += 1;
        }
        let tok = &self.b[start..self.i];
        let ok = tok == b"true"
            || tok == b"false"
            || tok == b"null"
            || (!tok.is_empty()
                && tok
                    .iter()
                    .all(|c| c.is_ascii_digit() || matches!(c, b'-' | b'+' | b'.' | b'e' | b'E')));
        ok.then_some(())
    }
    pub fn skip_value(&mut self) -> Option<()> {
        match self.peek()? {
            b'"' => self.string().map(|_| ()),
            b'{' => self.object(|p, _| p.skip_value()),
            b'[' => self.array(|p| p.skip_value()),
            _ => self.skip_scalar(),
        }
    }
    pub fn object(&mut self, mut f: impl FnMut(&mut Self, &'a [u8]) -> Option<()>) -> Option<()> {
        self.eat(b'{')?;
        self.depth += 1;
        if self.depth > self.max_depth {
            return None;
        }
        if self.eat(b'}').is_none() {
            loop {
                let key = self.string()?;
                self.eat(b':')?;
                f(self, key)?;
                if self.eat(b',').is_some() {
                    continue;
                }
                self.eat(b'}')?;
                break;
            }
        }
        self.depth -= 1;
        Some(())
    }
    pub fn array(&mut self, mut f: impl FnMut(&mut Self) -> Option<()>) -> Option<()> {
        self.eat(b'[')?;
        self.depth += 1;
        if self.depth > self.max_depth {
            return None;
        }
        if self.eat(b']').is_none() {
            loop {
                f(self)?;
                if self.eat(b',').is_some() {
                    continue;
                }
                self.eat(b']')?;
                break;
            }
        }
        self.depth -= 1;
        Some(())
    }
}

/// A JSON string's raw bytes (between the quotes), unescaped: `\"`, `\\`, `\/`, `\b\f\n\r\t`, `\uXXXX` with
/// surrogate pairs (.NET writes `&` of a SAS as `\u0026`). `None` for invalid UTF-8, a raw control character,
/// an unknown escape, or a lone surrogate. The output is sized once from the raw length, which the unescaped
/// text never exceeds: a token is never copied by a reallocation that would leave an unzeroed copy behind.
pub(crate) fn unescape(raw: &[u8]) -> Option<String> {
    let mut out = String::with_capacity(raw.len());
    let mut i = 0;
    while i < raw.len() {
        if raw[i] != b'\\' {
            // Copy a run of plain bytes at once; UTF-8 is checked on the run.
            let end = raw[i..]
                .iter()
                .position(|&c| c == b'\\')
                .map_or(raw.len(), |k| i + k);
            let run = &raw[i..end];
            if run.iter().any(|&c| c < 0x20) {
                return None;
            }
            out.push_str(std::str::from_utf8(run).ok()?);
            i = end;
            continue;
        }
        let e = *raw.get(i + 1)?;
        i += 2;
        out.push(match e {
            b'"' => '"',
            b'\\' => '\\',
            b'/' => '/',
            b'b' => '\u{8}',
            b'f' => '\u{c}',
            b'n' => '\n',
            b'r' => '\r',
            b't' => '\t',
            b'u' => {
                let hi = hex4(raw, i)?;
                i += 4;
                let cp = if (0xd800..0xdc00).contains(&hi) {
                    if raw.get(i..i + 2) != Some(b"\\u") {
                        return None;
                    }
                    let lo = hex4(raw, i + 2)?;
                    i += 6;
                    if !(0xdc00..0xe000).contains(&lo) {
                        return None;
                    }
                    0x10000 + ((hi - 0xd800) << 10) + (lo - 0xdc00)
                } else {
                    hi
                };
                char::from_u32(cp)?
            }
            _ => return None,
        });
    }
    Some(out)
}

/// Four hex digits at `raw[i..]`.
fn hex4(raw: &[u8], i: usize) -> Option<u32> {
    let h = raw.get(i..i + 4)?;
    if !h.iter().all(u8::is_ascii_hexdigit) {
        return None;
    }
    u32::from_str_radix(std::str::from_utf8(h).ok()?, 16).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unescaping_handles_pairs_and_refuses_junk() {
        assert_eq!(unescape(br"a\u0026b\ud83d\ude00").unwrap(), "a&b\u{1f600}");
        assert_eq!(
            unescape(br#"x\"y\u00e9\/\\\b\f\n\r\t"#).unwrap(),
            "x\"y\u{e9}/\\\u{8}\u{c}\n\r\t"
        );
        for bad in [
            &br"\x"[..],
            br"\u12",
            br"\ud83d",
            br"\ud83dx",
            br"\ud83d\u0041",
            br"\ude00",
            br"\u+041",
            br"\",
            b"\x01",
            b"\xff",
        ] {
            assert!(unescape(bad).is_none(), "{bad:?}");
        }
    }

    #[test]
    fn nesting_is_bounded() {
        let deep = "[".repeat(10_000);
        assert!(Parser::new(deep.as_bytes()).skip_value().is_none());
        let ok = "[".repeat(32) + &"]".repeat(32);
        assert!(Parser::new(ok.as_bytes()).skip_value().is_some());
        let two = "[[]]";
        assert!(Parser::bounded(two.as_bytes(), 1).skip_value().is_none());
        assert!(Parser::bounded(two.as_bytes(), 2).skip_value().is_some());
    }
}
