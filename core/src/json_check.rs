//! A JSON syntax check for records of the `json` and `multijson` formats, run by `append` so that one bad record
//! is refused on its own instead of making the service reject the whole chunk it would have joined.
//!
//! It only checks syntax (RFC 8259): no values are built, nothing is allocated, and the nesting stack is a fixed
//! bit array, so the cost is one pass over the record and a few hundred bytes of stack. UTF-8 is checked by the
//! caller beforehand.

/// Deepest nesting of objects and arrays accepted. Deeper documents are refused rather than tracked.
pub const MAX_DEPTH: usize = 512;

/// Why a record is not JSON: the byte offset where the problem was found, and what it is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SyntaxError {
    /// Byte offset in the record.
    pub at: usize,
    /// What was wrong there.
    pub what: &'static str,
}

/// Open containers, one bit per level: 1 for an object, 0 for an array. The innermost one's kind is also kept
/// apart (`top`), so that the step after every value reads a register, not the bit array.
struct Stack {
    bits: [u64; MAX_DEPTH / 64],
    depth: usize,
    /// The innermost container: `Some(true)` an object, `Some(false)` an array, `None` at the top level.
    top: Option<bool>,
}

impl Stack {
    #[inline(always)]
    fn push(&mut self, object: bool, at: usize) -> Result<(), SyntaxError> {
        if self.depth == MAX_DEPTH {
            return Err(SyntaxError {
                at,
                what: "nested deeper than 512 levels",
            });
        }
        let (w, b) = (self.depth / 64, self.depth % 64);
        if object {
            self.bits[w] |= 1 << b;
        } else {
            self.bits[w] &= !(1 << b);
        }
        self.depth += 1;
        self.top = Some(object);
        Ok(())
    }

    #[inline(always)]
    fn top_is_object(&self) -> Option<bool> {
        self.top
    }

    #[inline(always)]
    fn pop(&mut self) {
        self.depth -= 1;
        self.top = self
            .depth
            .checked_sub(1)
            .map(|d| self.bits[d / 64] & (1 << (d % 64)) != 0);
    }
}

const ONES: u64 = 0x0101_0101_0101_0101;
const HIGHS: u64 = 0x8080_8080_8080_8080;

/// The offset of the first byte at or after `i` that ends a string's plain run (a quote, a backslash or a control
/// byte below 0x20), or `s.len()`: 8 bytes a step. `(x - k) & !x & 0x80..80` flags the bytes of `x` below `k`
/// (and `w ^ 0x22..22` has a zero byte where `w` has a quote); a borrow can only flag bytes above a truly flagged
/// one, whatever the high bytes (UTF-8 included), so the lowest flag of the three is exact.
#[inline(always)]
fn plain_run_end(s: &[u8], mut i: usize) -> usize {
    while let Some(w) = s.get(i..).and_then(<[u8]>::first_chunk::<8>) {
        let w = u64::from_le_bytes(*w);
        let quote = w ^ (ONES * u64::from(b'"'));
        let backslash = w ^ (ONES * u64::from(b'\\'));
        let found = (quote.wrapping_sub(ONES) & !quote)
            | (backslash.wrapping_sub(ONES) & !backslash)
            | (w.wrapping_sub(ONES * 0x20) & !w);
        let found = found & HIGHS;
        if found != 0 {
            return i + (found.trailing_zeros() / 8) as usize;
        }
        i += 8;
    }
    while let Some(&b) = s.get(i) {
        if b == b'"' || b == b'\\' || b < 0x20 {
            break;
        }
        i += 1;
    }
    i
}

/// The scanner's small steps are `#[inline(always)]`: at opt-level "z" each was a call per byte, and the check took
/// a third of kedge-send's CPU (README "Benchmarks"). `WORDS` skips string bodies 8 bytes a step; without it (only
/// for the tests and the fuzz target, as the reference the fast path must agree with) a byte at a time.
struct Scanner<'a, const WORDS: bool> {
    s: &'a [u8],
    i: usize,
}

impl<const WORDS: bool> Scanner<'_, WORDS> {
    fn err(&self, what: &'static str) -> SyntaxError {
        SyntaxError { at: self.i, what }
    }

    #[inline(always)]
    fn peek(&self) -> Option<u8> {
        self.s.get(self.i).copied()
    }

    #[inline(always)]
    fn skip_ws(&mut self) {
        // Telemetry is mostly compact: one compare says there is no whitespace.
        while let Some(b) = self.peek().filter(|&b| b <= b' ') {
            if !matches!(b, b' ' | b'\t' | b'\n' | b'\r') {
                return;
            }
            self.i += 1;
        }
    }

    #[inline(always)]
    fn expect(&mut self, b: u8, what: &'static str) -> Result<(), SyntaxError> {
        if self.peek() == Some(b) {
            self.i += 1;
            Ok(())
        } else {
            Err(self.err(what))
        }
    }

    /// A string, the opening quote at the cursor.
    #[inline(always)]
    fn string(&mut self) -> Result<(), SyntaxError> {
        self.expect(b'"', "expected a string")?;
        loop {
            if WORDS {
                self.i = plain_run_end(self.s, self.i);
            }
            match self.peek() {
                None => return Err(self.err("unterminated string")),
                Some(b'"') => {
                    self.i += 1;
                    return Ok(());
                }
                Some(b'\\') => {
                    self.i += 1;
                    match self.peek() {
                        Some(b'"' | b'\\' | b'/' | b'b' | b'f' | b'n' | b'r' | b't') => self.i += 1,
                        Some(b'u') => {
                            self.i += 1;
                            for _ in 0..4 {
                                match self.peek() {
                                    Some(h) if h.is_ascii_hexdigit() => self.i += 1,
                                    _ => {
                                        return Err(self.err("\\u must be followed by 4 hex digits"))
                                    }
                                }
                            }
                        }
                        _ => return Err(self.err("invalid escape in a string")),
                    }
                }
                Some(c) if c < 0x20 => {
                    return Err(self.err("control character in a string (escape it)"))
                }
                Some(_) => self.i += 1,
            }
        }
    }

    #[inline(always)]
    fn digits(&mut self) -> usize {
        let start = self.i;
        while self.peek().is_some_and(|b| b.is_ascii_digit()) {
            self.i += 1;
        }
        self.i - start
    }

    fn number(&mut self) -> Result<(), SyntaxError> {
        if self.peek() == Some(b'-') {
            self.i += 1;
        }
        match self.peek() {
            Some(b'0') => self.i += 1,
            Some(b'1'..=b'9') => {
                self.digits();
            }
            _ => return Err(self.err("invalid number")),
        }
        if self.peek() == Some(b'.') {
            self.i += 1;
            if self.digits() == 0 {
                return Err(self.err("a decimal point must be followed by digits"));
            }
        }
        if let Some(b'e' | b'E') = self.peek() {
            self.i += 1;
            if let Some(b'+' | b'-') = self.peek() {
                self.i += 1;
            }
            if self.digits() == 0 {
                return Err(self.err("an exponent must have digits"));
            }
        }
        Ok(())
    }

    fn literal(&mut self, word: &'static [u8]) -> Result<(), SyntaxError> {
        if self.s[self.i..].starts_with(word) {
            self.i += word.len();
            Ok(())
        } else {
            Err(self.err("invalid literal (expected true, false or null)"))
        }
    }

    /// An object key and its colon, the cursor at the key.
    #[inline(always)]
    fn key(&mut self) -> Result<(), SyntaxError> {
        if self.peek() != Some(b'"') {
            return Err(self.err("expected a quoted object key"));
        }
        self.string()?;
        self.skip_ws();
        self.expect(b':', "expected ':' after an object key")?;
        self.skip_ws();
        Ok(())
    }

    /// One complete value, the cursor at its first byte.
    fn value(&mut self) -> Result<(), SyntaxError> {
        let mut stack = Stack {
            bits: [0; MAX_DEPTH / 64],
            depth: 0,
            top: None,
        };
        'value: loop {
            // A value starts here.
            match self.peek() {
                Some(b'{') => {
                    stack.push(true, self.i)?;
                    self.i += 1;
                    self.skip_ws();
                    if self.peek() == Some(b'}') {
                        self.i += 1;
                        stack.pop();
                    } else {
                        self.key()?;
                        continue 'value;
                    }
                }
                Some(b'[') => {
                    stack.push(false, self.i)?;
                    self.i += 1;
                    self.skip_ws();
                    if self.peek() == Some(b']') {
                        self.i += 1;
                        stack.pop();
                    } else {
                        continue 'value;
                    }
                }
                Some(b'"') => self.string()?,
                Some(b'-' | b'0'..=b'9') => self.number()?,
                Some(b't') => self.literal(b"true")?,
                Some(b'f') => self.literal(b"false")?,
                Some(b'n') => self.literal(b"null")?,
                None => return Err(self.err("unexpected end: a value is missing")),
                Some(_) => return Err(self.err("unexpected character where a value should start")),
            }
            // A value ended: close containers until one continues with a comma.
            loop {
                let Some(object) = stack.top_is_object() else {
                    return Ok(());
                };
                self.skip_ws();
                match (self.peek(), object) {
                    (Some(b','), true) => {
                        self.i += 1;
                        self.skip_ws();
                        self.key()?;
                        continue 'value;
                    }
                    (Some(b','), false) => {
                        self.i += 1;
                        self.skip_ws();
                        continue 'value;
                    }
                    (Some(b'}'), true) | (Some(b']'), false) => {
                        self.i += 1;
                        stack.pop();
                    }
                    (None, _) => {
                        return Err(self.err("unexpected end: an object or array is not closed"))
                    }
                    (_, true) => return Err(self.err("expected ',' or '}' in an object")),
                    (_, false) => return Err(self.err("expected ',' or ']' in an array")),
                }
            }
        }
    }
}

/// Checks that `text` is JSON: exactly one value (`many == false`, the `json` format: one object per line) or
/// one or more values separated by whitespace (`many == true`, `multijson`).
pub fn check(text: &[u8], many: bool) -> Result<(), SyntaxError> {
    check_with::<true>(text, many)
}

/// [`check`] a byte at a time: the reference the word-at-a-time string skipping is tested against (unit tests, the
/// `json_check` fuzz target). Same result, same offset, same message, for any bytes.
#[cfg(any(test, feature = "testing"))]
pub fn check_bytewise(text: &[u8], many: bool) -> Result<(), SyntaxError> {
    check_with::<false>(text, many)
}

fn check_with<const WORDS: bool>(text: &[u8], many: bool) -> Result<(), SyntaxError> {
    let mut sc = Scanner::<WORDS> { s: text, i: 0 };
    let mut values = 0usize;
    loop {
        sc.skip_ws();
        if sc.peek().is_none() {
            return if values == 0 {
                Err(sc.err("no JSON value in the record"))
            } else {
                Ok(())
            };
        }
        if values == 1 && !many {
            return Err(sc.err("more than one JSON value in a json record (use multijson)"));
        }
        sc.value()?;
        values += 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_what_rfc_8259_accepts() {
        for ok in [
            &b"{}"[..],
            b"[]",
            b" {\"a\": 1, \"b\": [true, false, null, -0.5e+3, \"x\\u00e9\\n\"], \"c\": {}} ",
            b"\"just a string\"",
            b"0",
            b"-12.25E-2",
            b"[[[[]]],{\"k\":[{}]}]",
            "{\"ünï\":\"cödé\"}".as_bytes(),
        ] {
            assert_eq!(check(ok, false), Ok(()), "{}", String::from_utf8_lossy(ok));
        }
        assert_eq!(check(b"{\"a\":1}\n{\"a\":2}\n[1]", true), Ok(()));
    }

    #[test]
    fn refuses_truncated_and_malformed_records_with_the_offset() {
        for (bad, at) in [
            (&b"{\"device\":\"gw-1\",\"temp\":21."[..], 27),
            (b"{\"a\":1", 6),
            (b"{\"a\" 1}", 5),
            (b"{a:1}", 1),
            (b"[1,]", 3),
            (b"{\"a\":1,}", 7),
            (b"[01]", 2),
            (b"\"tab\there\"", 4),
            (b"\"bad \\x escape\"", 6),
            (b"tru", 0),
            (b"{} {}", 3),
            (b"", 0),
            (b"   ", 3),
            (b"]", 0),
            (b"[1 2]", 3),
            (b"1.", 2),
            (b"1e", 2),
            (b"\"\\u12G4\"", 5),
        ] {
            let e = check(bad, false).expect_err(&String::from_utf8_lossy(bad));
            assert_eq!(e.at, at, "{}: {}", String::from_utf8_lossy(bad), e.what);
        }
        assert!(check(b"{} {", true).is_err());
    }

    /// Both checks, which must agree exactly (offset and message); returns the result.
    fn both(text: &[u8], many: bool) -> Result<(), SyntaxError> {
        let fast = check(text, many);
        assert_eq!(
            fast,
            check_bytewise(text, many),
            "{:?}",
            String::from_utf8_lossy(text)
        );
        fast
    }

    #[test]
    fn the_word_skip_stops_at_quotes_escapes_and_control_bytes_at_every_position_of_a_word() {
        // (what sits inside the string, whether the record is JSON, where the error is from the string's start)
        let cases: [(&[u8], Option<usize>); 14] = [
            (b"", None),
            (b"\\\"", None),
            (b"\\\\", None),
            (b"\\n", None),
            (b"\\u00e9", None),
            (b"\\u00g9", Some(4)),
            (b"\\x", Some(1)),
            (b"\x01", Some(0)),
            (b"\x1f", Some(0)),
            (b"\t", Some(0)),
            (b" ~\x7f", None),
            ("\u{e9}".as_bytes(), None),
            ("\u{20ac}".as_bytes(), None),
            ("\u{1f600}".as_bytes(), None),
        ];
        for lead in 0..17 {
            for (inner, bad) in cases {
                for tail in 0..17 {
                    // A key of `lead` plain bytes moves the string across word boundaries; `tail` plain bytes
                    // after the special one move the string's end.
                    let mut r = b"{\"".to_vec();
                    r.extend(std::iter::repeat_n(b'k', lead));
                    r.extend_from_slice(b"\":\"");
                    let start = r.len();
                    r.extend(std::iter::repeat_n(b'v', lead % 5));
                    r.extend_from_slice(inner);
                    r.extend(std::iter::repeat_n(b'w', tail));
                    r.extend_from_slice(b"\"}");
                    let got = both(&r, false);
                    match bad {
                        None => assert_eq!(got, Ok(()), "{}", String::from_utf8_lossy(&r)),
                        Some(at) => assert_eq!(got.unwrap_err().at, start + lead % 5 + at),
                    }
                    // Cut anywhere: never accepted, and both agree on where.
                    for cut in 0..r.len() {
                        assert!(both(&r[..cut], false).is_err());
                    }
                }
            }
        }
    }

    #[test]
    fn numbers_end_at_the_first_other_byte_whatever_it_is_at_every_position_of_a_word() {
        for lead in 0..9 {
            for digits in 0..20 {
                for stop in 0..=255u8 {
                    // `[` and `lead` spaces move the number across word boundaries; the byte after its digits
                    // is any byte, then more digits that must not count as the same run.
                    for part in [&b""[..], b"1.", b"-", b"2e"] {
                        let mut r = b"[".to_vec();
                        r.extend(std::iter::repeat_n(b' ', lead));
                        r.extend_from_slice(part);
                        r.extend((0..digits).map(|d| b'0' + ((d * 7 + 1) % 10) as u8));
                        r.push(stop);
                        r.extend_from_slice(b"12]");
                        both(&r, false).ok();
                        both(&r[..r.len() - 3], true).ok();
                    }
                }
            }
        }
        assert_eq!(check(b"[12345678901234567890]", false), Ok(()));
        assert_eq!(check(b"[1234567890123456789a]", false).unwrap_err().at, 20);
        assert_eq!(check(b"[12345678901234567:]", false).unwrap_err().at, 18);
        assert_eq!(check(b"[1.12345678\xff]", false).unwrap_err().at, 11);
    }

    #[test]
    fn word_and_byte_checks_agree_on_mutated_records() {
        let seeds: [&[u8]; 4] = [
            br#"{"seq":12,"device":"gw-1","ts":"2026-11-22T01:02:03Z","temp":21.5,"ok":true,"n":null}"#,
            br#"[{"a":"x\u00e9\n\"q\"","b":[1e5,-0.25E-3,0]},"long string with spaces and / slashes"]"#,
            "{\"ünï\":\"cödé €😀 and more text past a word\"}".as_bytes(),
            b"{\"a\":1}\n{\"b\":\"two\"}\n[3]",
        ];
        // Replacements that matter to strings and numbers; a fixed xorshift picks where.
        let bytes = [
            b'"', b'\\', b'u', b'0', 0x01, 0x1f, b' ', b'\n', b'}', b']', b',', b':', 0xc3, 0xa9,
        ];
        let mut x = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = move || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        for seed in seeds {
            for _ in 0..3000 {
                let mut r = seed.to_vec();
                for _ in 0..1 + next() % 3 {
                    let at = (next() % r.len() as u64) as usize;
                    match next() % 3 {
                        0 => r[at] = bytes[(next() % bytes.len() as u64) as usize],
                        1 => r.insert(at, bytes[(next() % bytes.len() as u64) as usize]),
                        _ => {
                            r.remove(at);
                        }
                    }
                }
                let _ = both(&r, false);
                let _ = both(&r, true);
            }
        }
    }

    /// A random JSON value, `depth` levels at most, with the odd whitespace, escape and number form.
    fn random_value(next: &mut impl FnMut() -> u64, depth: u32, out: &mut Vec<u8>) {
        let ws = |next: &mut dyn FnMut() -> u64, out: &mut Vec<u8>| {
            if next().is_multiple_of(4) {
                out.extend_from_slice([&b" "[..], b"\t", b"\r\n ", b"  "][(next() % 4) as usize]);
            }
        };
        let string = |next: &mut dyn FnMut() -> u64, out: &mut Vec<u8>| {
            out.push(b'"');
            for _ in 0..next() % 12 {
                let parts: [&[u8]; 16] = [
                    b"a",
                    b"Z",
                    b" ",
                    b"\\n",
                    b"\\\"",
                    b"\\u00e9",
                    b"\\/",
                    "é".as_bytes(),
                    "😀".as_bytes(),
                    b"0",
                    b"\\b\\f\\r\\t",
                    b"\\u00E9",
                    b"\\uD83D\\uDE00",
                    b"\\uDE00",
                    b"\\\\",
                    b"\x7f",
                ];
                out.extend_from_slice(parts[(next() % 16) as usize]);
            }
            out.push(b'"');
        };
        ws(next, out);
        match next() % if depth == 0 { 4 } else { 6 } {
            0 => string(next, out),
            1 => {
                let nums: [&[u8]; 9] = [
                    b"0",
                    b"-0",
                    b"12",
                    b"-3.25",
                    b"1e9",
                    b"2E-7",
                    b"0.5e+3",
                    b"123456789012345678901",
                    b"7",
                ];
                out.extend_from_slice(nums[(next() % 9) as usize]);
            }
            2 => out.extend_from_slice([&b"true"[..], b"false"][(next() % 2) as usize]),
            3 => out.extend_from_slice(b"null"),
            4 => {
                out.push(b'[');
                for k in 0..next() % 4 {
                    if k > 0 {
                        out.push(b',');
                    }
                    random_value(next, depth - 1, out);
                }
                ws(next, out);
                out.push(b']');
            }
            _ => {
                out.push(b'{');
                for k in 0..next() % 4 {
                    if k > 0 {
                        out.push(b',');
                    }
                    ws(next, out);
                    string(next, out);
                    ws(next, out);
                    out.push(b':');
                    random_value(next, depth - 1, out);
                }
                ws(next, out);
                out.push(b'}');
            }
        }
        ws(next, out);
    }

    /// The check against an independent parser (serde_json, which follows RFC 8259 too): random documents, then
    /// the same with bytes replaced, inserted or removed, must be accepted by both or refused by both. The
    /// reference `check_bytewise` shares the scanner's code, so only this test would catch a mistake common to
    /// both.
    #[test]
    fn agrees_with_an_independent_parser_on_random_and_mutated_records() {
        let mut x = 0x2545_f491_4f6c_dd1du64;
        let mut next = move || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        let bytes = [
            b'"', b'\\', b'u', b'0', b'e', b'-', b'.', b'+', 0x01, b' ', b'\n', b'{', b'}', b'[',
            b']', b',', b':', b't', b'n', b'x', 0xc3, 0xa9, b'd', b'f', b'E', b'\t', b'\r', 0x0c,
            0x0b,
        ];
        let (mut valid, mut refused) = (0, 0);
        for _ in 0..60_000 {
            let mut r = Vec::new();
            random_value(&mut next, 4, &mut r);
            for round in 0..2 {
                if round == 1 {
                    for _ in 0..1 + next() % 2 {
                        if r.is_empty() {
                            break;
                        }
                        let at = (next() % r.len() as u64) as usize;
                        let b = bytes[(next() % bytes.len() as u64) as usize];
                        match next() % 3 {
                            0 => r[at] = b,
                            1 => r.insert(at, b),
                            _ => {
                                r.remove(at);
                            }
                        }
                    }
                }
                // `append` checks UTF-8 before the syntax; serde_json would refuse it for that alone.
                if std::str::from_utf8(&r).is_err() {
                    continue;
                }
                let ours = check(&r, false);
                let theirs = serde_json::from_slice::<serde::de::IgnoredAny>(&r);
                assert_eq!(
                    ours.is_ok(),
                    theirs.is_ok(),
                    "{:?}: ours {ours:?}, serde_json {theirs:?}",
                    String::from_utf8_lossy(&r)
                );
                if ours.is_ok() {
                    valid += 1;
                } else {
                    refused += 1;
                }
            }
        }
        assert!(
            valid > 60_000 && refused > 20_000,
            "{valid} valid, {refused} refused"
        );
    }

    #[test]
    fn nesting_is_bounded_without_recursion() {
        let mut deep = vec![b'['; MAX_DEPTH];
        deep.extend(vec![b']'; MAX_DEPTH]);
        assert_eq!(check(&deep, false), Ok(()));
        let mut deeper = vec![b'['; MAX_DEPTH + 1];
        deeper.extend(vec![b']'; MAX_DEPTH + 1]);
        assert_eq!(check(&deeper, false).unwrap_err().at, MAX_DEPTH);
        // A megabyte of openers is refused at the limit, not by running out of stack.
        assert!(check(&vec![b'{'; 1 << 20], false).is_err());
    }
}
