//! A destination's batch: records framed into a buffer whose capacity is fixed when the destination is added.
//!
//! Records are never split. Once a batch has been offered to the service it is *sealed*: its bytes and chunk id
//! stay exactly as sent until the service acknowledges or refuses them, so a resend is the same chunk.

use std::time::Instant;

use crate::error::{Error, ErrorKind};
use crate::json_check;
use crate::wire::Format;

/// Records buffered in RAM for one destination.
pub struct Batch {
    buf: Vec<u8>,
    records: u64,
    first_at: Option<Instant>,
    /// Set when the batch is first offered to the service; kept across retries.
    pub chunk_id: Option<[u8; 16]>,
    /// Requests made for this chunk so far, across calls: makes each request id unique.
    pub attempts: u32,
}

impl Batch {
    /// Allocates the buffer once; it never grows.
    pub fn with_capacity(capacity: usize) -> Batch {
        Batch {
            buf: Vec::with_capacity(capacity),
            records: 0,
            first_at: None,
            chunk_id: None,
            attempts: 0,
        }
    }

    /// The framed records.
    pub fn bytes(&self) -> &[u8] {
        &self.buf
    }
    /// Records in the batch.
    pub fn records(&self) -> u64 {
        self.records
    }
    /// Nothing buffered.
    pub fn is_empty(&self) -> bool {
        self.records == 0
    }
    /// Offered to the service at least once: no more records may join.
    pub fn is_sealed(&self) -> bool {
        self.chunk_id.is_some()
    }
    /// When the first record arrived.
    pub fn first_at(&self) -> Option<Instant> {
        self.first_at
    }
    /// The fixed capacity.
    pub fn capacity(&self) -> usize {
        self.buf.capacity()
    }

    /// Whether `record` would fit now (the caller has validated it).
    pub fn fits(&self, format: Format, record: &[u8]) -> bool {
        if self.is_sealed() {
            return false;
        }
        if self.records > 0 && format.one_record_per_request() {
            return false;
        }
        self.buf.len() + framed_len(format, record) <= self.buf.capacity()
    }

    /// Appends a validated record that fits (see [`Batch::fits`]).
    pub fn push(&mut self, format: Format, record: &[u8], now: Instant) {
        debug_assert!(self.fits(format, record));
        self.buf.extend_from_slice(record);
        if needs_newline(format, record) {
            self.buf.push(b'\n');
        }
        self.records += 1;
        self.first_at.get_or_insert(now);
    }

    /// Keeps only the given byte ranges (ascending, disjoint, each a run of whole records) holding `records`
    /// records, moved to the front: what is left of a refused batch whose good records were delivered. The
    /// batch is unsealed (a new chunk id when it is sent again) and keeps its age.
    pub fn retain_ranges(&mut self, ranges: &[(usize, usize)], records: u64) {
        let mut to = 0;
        for &(a, b) in ranges {
            debug_assert!(a >= to && b >= a && b <= self.buf.len());
            self.buf.copy_within(a..b, to);
            to += b - a;
        }
        self.buf.truncate(to);
        self.records = records;
        self.chunk_id = None;
        self.attempts = 0;
        if records == 0 {
            self.first_at = None;
        }
    }

    /// Empties the batch after the service acknowledged or refused it. Keeps the allocation.
    pub fn clear(&mut self) {
        self.buf.clear();
        self.records = 0;
        self.first_at = None;
        self.chunk_id = None;
        self.attempts = 0;
    }
}

#[inline(always)]
fn needs_newline(format: Format, record: &[u8]) -> bool {
    !format.one_record_per_request() && record.last() != Some(&b'\n')
}

/// Bytes a record takes in a batch: line formats end every record with a newline.
#[inline(always)]
pub fn framed_len(format: Format, record: &[u8]) -> usize {
    record.len() + needs_newline(format, record) as usize
}

/// Finds the places between records in a batch, for isolating the records the service refuses: a newline that
/// ends a record, as the service parses the format (inside a quoted CSV field or a JSON string it does not).
/// One pass, no allocation; a range handed to it must begin at a record boundary.
struct Boundaries {
    format: Format,
    in_quotes: bool,
    in_string: bool,
    escaped: bool,
    depth: u32,
}

impl Boundaries {
    fn new(format: Format) -> Self {
        Boundaries {
            format,
            in_quotes: false,
            in_string: false,
            escaped: false,
            depth: 0,
        }
    }

    /// Whether byte `b` is a newline that ends a record.
    fn step(&mut self, b: u8) -> bool {
        match self.format {
            Format::Csv | Format::Scsv | Format::Sohsv | Format::Psv => {
                if b == b'"' {
                    self.in_quotes = !self.in_quotes;
                }
                b == b'\n' && !self.in_quotes
            }
            Format::MultiJson => {
                if self.in_string {
                    match (self.escaped, b) {
                        (true, _) => self.escaped = false,
                        (false, b'\\') => self.escaped = true,
                        (false, b'"') => self.in_string = false,
                        _ => {}
                    }
                    return false;
                }
                match b {
                    b'"' => self.in_string = true,
                    b'{' | b'[' => self.depth += 1,
                    b'}' | b']' => self.depth = self.depth.saturating_sub(1),
                    _ => {}
                }
                b == b'\n' && self.depth == 0
            }
            _ => b == b'\n',
        }
    }
}

/// Records in `raw` (a batch or a range of it that begins at a record boundary), and the record boundary
/// nearest to its middle (an offset just after a record's newline, strictly inside `raw`), if it holds more than
/// one record. Formats of one record per request have no boundaries.
pub fn records_and_middle(format: Format, raw: &[u8]) -> (u64, Option<usize>) {
    if format.one_record_per_request() {
        return (u64::from(!raw.is_empty()), None);
    }
    let mut scan = Boundaries::new(format);
    let mid = raw.len() / 2;
    let mut records = 0u64;
    let mut best: Option<usize> = None;
    for (i, &b) in raw.iter().enumerate() {
        if scan.step(b) {
            records += 1;
            let at = i + 1;
            if at < raw.len() && best.is_none_or(|x| at.abs_diff(mid) < x.abs_diff(mid)) {
                best = Some(at);
            }
        }
    }
    if raw.last().is_some_and(|&b| b != b'\n') {
        records += 1; // a last record without its newline
    }
    (records, best)
}

const ONES: u64 = 0x0101_0101_0101_0101;
const HIGHS: u64 = 0x8080_8080_8080_8080;

/// What [`scan_text`] found: whether the bytes are UTF-8 (else how many lead a valid prefix), and the offset of
/// the first newline, if asked for.
struct TextScan {
    utf8: Result<(), usize>,
    newline: Option<usize>,
}

/// UTF-8 validity and the first `\n` (when `newline`) in one pass, 8 bytes a step while the bytes are ASCII (as
/// telemetry is): a word is ASCII when no high bit is set, and holds a newline when `w ^ 0x0a..0a` has a zero byte.
/// From the first non-ASCII word on, the standard library's validator checks the rest.
fn scan_text(record: &[u8], newline: bool) -> TextScan {
    let mut found = None;
    let mut words = record.chunks_exact(8);
    let mut ascii = 0;
    for w in &mut words {
        let w = u64::from_le_bytes([w[0], w[1], w[2], w[3], w[4], w[5], w[6], w[7]]);
        if w & HIGHS != 0 {
            break;
        }
        if newline && found.is_none() {
            let x = w ^ (ONES * u64::from(b'\n'));
            // Exact for ASCII bytes (no high bit set), so the lowest flagged byte is the first newline.
            let z = x.wrapping_sub(ONES) & !x & HIGHS;
            if z != 0 {
                found = Some(ascii + (z.trailing_zeros() / 8) as usize);
            }
        }
        ascii += 8;
    }
    // The tail, or everything from the first word with a non-ASCII byte (it starts on a character boundary).
    let rest = &record[ascii..];
    if newline && found.is_none() {
        found = rest.iter().position(|&b| b == b'\n').map(|i| ascii + i);
    }
    let utf8 = if rest.is_ascii() {
        Ok(())
    } else {
        std::str::from_utf8(rest)
            .map(|_| ())
            .map_err(|e| ascii + e.valid_up_to())
    };
    TextScan {
        utf8,
        newline: found,
    }
}

/// The end of the next record in a buffer of newline-ended records, from [`find_line`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LineEnd {
    /// Offset of the newline that ends the record.
    pub newline: usize,
    /// Whether every byte before it is ASCII (then it is UTF-8 with no further look).
    pub ascii: bool,
    /// Newlines inside the record (inside a quoted CSV field); 0 for other formats.
    pub inner_lines: u64,
}

/// The first newline in `buf` that ends a record: for CSV-like formats (RFC 4180 quoting) one outside a quoted
/// field, else the first. `None` when `buf` holds no whole record. 8 bytes a step: the newline test (the lowest
/// byte flagged by `(x - 0x01..01) & !x & 0x80..80` for `x = w ^ 0x0a..0a`) is exact for the lowest flag
/// whatever the bytes, and the words' high bits say whether a non-ASCII byte came before it.
pub fn find_line(format: Format, buf: &[u8]) -> Option<LineEnd> {
    let csv = matches!(
        format,
        Format::Csv | Format::Scsv | Format::Sohsv | Format::Psv
    );
    let mut from = 0;
    let mut high = 0u64;
    let mut in_quotes = false;
    let mut inner_lines = 0u64;
    loop {
        let (at, h) = first_newline(&buf[from..])?;
        high |= h;
        if csv {
            // A doubled quote ("") toggles twice, so it needs no special case.
            in_quotes ^= odd_quotes(&buf[from..from + at]);
            if in_quotes {
                inner_lines += 1;
                from += at + 1;
                continue;
            }
        }
        return Some(LineEnd {
            newline: from + at,
            ascii: high == 0,
            inner_lines,
        });
    }
}

/// Whether `s` holds an odd number of `"`, 8 bytes a step: `((x & 0x7f..7f) + 0x7f..7f) | x` has its high bit
/// clear exactly in the zero bytes of `x = w ^ 0x22..22` (no carry crosses a byte), so those flags are exact, and
/// their parity is their xor (a popcount is a dozen instructions on baseline x86_64 and armv7).
#[inline(always)]
fn odd_quotes(s: &[u8]) -> bool {
    const LOWS: u64 = !HIGHS;
    let mut words = s.chunks_exact(8);
    let mut flags = 0u64;
    for w in &mut words {
        let x = u64::from_le_bytes([w[0], w[1], w[2], w[3], w[4], w[5], w[6], w[7]])
            ^ (ONES * u64::from(b'"'));
        flags ^= !(((x & LOWS) + LOWS) | x) & HIGHS;
    }
    let mut odd = false;
    for &b in words.remainder() {
        odd ^= b == b'"';
    }
    flags ^= flags >> 32;
    flags ^= flags >> 16;
    flags ^= flags >> 8;
    odd ^ (flags & 0x80 != 0)
}

/// The offset of the first `\n` in `buf`, and the or of the high bits of the bytes before it.
#[inline(always)]
fn first_newline(buf: &[u8]) -> Option<(usize, u64)> {
    let mut high = 0u64;
    let mut words = buf.chunks_exact(8);
    let mut at = 0;
    for w in &mut words {
        let w = u64::from_le_bytes([w[0], w[1], w[2], w[3], w[4], w[5], w[6], w[7]]);
        let x = w ^ (ONES * u64::from(b'\n'));
        let z = x.wrapping_sub(ONES) & !x & HIGHS;
        if z != 0 {
            let k = z.trailing_zeros() / 8;
            // The bytes below the newline: k of them (k < 8).
            let below = (1u64 << (8 * k)) - 1;
            return Some((at + k as usize, high | (w & below & HIGHS)));
        }
        high |= w & HIGHS;
        at += 8;
    }
    for &b in words.remainder() {
        if b == b'\n' {
            return Some((at, high));
        }
        high |= u64::from(b & 0x80);
        at += 1;
    }
    None
}

/// Checks a record before it is buffered, so that nothing the service can never take sits in a batch: its size,
/// UTF-8 for text formats, one line for `json`, and JSON syntax for `multijson` and (with `json_check`, the
/// `json.check` key) `json`. Without the syntax check a `json` record must still not be blank (the service would
/// take it as no row), and a malformed one still costs only itself: the service refuses its chunk and the
/// streaming sender isolates it by sending the chunk in halves (which is why `Client::new` refuses
/// `json.check=false` with a spool or another mode). `multijson` is always checked: its records' boundaries in a
/// batch, which those halves are cut at, depend on their syntax.
pub fn validate_record(
    format: Format,
    record: &[u8],
    capacity: usize,
    json_check: bool,
) -> Result<(), Error> {
    check_size(format, record, capacity)?;
    if format.is_binary() {
        return Ok(());
    }
    // One pass for UTF-8 and (json) the first newline: the two separate scans, one of them byte at a time at
    // opt-level "z", were a tenth of the pipeline's CPU outside the compressor.
    let scan = scan_text(record, format == Format::Json);
    check_text(format, record, json_check, scan)
}

/// [`validate_record`] for a record that [`find_line`] cut from a buffer of lines: no newline in it (for a
/// line format other than CSV), and `ascii` says whether its bytes were all ASCII, so no second scan is needed.
pub fn validate_line(
    format: Format,
    line: &[u8],
    capacity: usize,
    json_check: bool,
    ascii: bool,
) -> Result<(), Error> {
    check_size(format, line, capacity)?;
    let utf8 = if ascii {
        Ok(())
    } else {
        std::str::from_utf8(line)
            .map(|_| ())
            .map_err(|e| e.valid_up_to())
    };
    check_text(
        format,
        line,
        json_check,
        TextScan {
            utf8,
            newline: None,
        },
    )
}

fn check_size(format: Format, record: &[u8], capacity: usize) -> Result<(), Error> {
    if record.is_empty() {
        return Err(Error::new(
            ErrorKind::InvalidRecord,
            "empty record: nothing to ingest",
        ));
    }
    if framed_len(format, record) > capacity {
        return Err(Error::new(
            ErrorKind::RecordTooLarge,
            format!(
                "record of {} bytes does not fit a batch of {} bytes: raise batch.bytes (at most 4194304) or split the record",
                record.len(),
                capacity
            ),
        ));
    }
    Ok(())
}

fn check_text(
    format: Format,
    record: &[u8],
    json_check: bool,
    scan: TextScan,
) -> Result<(), Error> {
    if let Err(valid_up_to) = scan.utf8 {
        return Err(Error::new(
            ErrorKind::InvalidRecord,
            format!(
                "record is not valid UTF-8 (at byte {valid_up_to}): text formats must be UTF-8"
            ),
        ));
    }
    if let Some(at) = scan.newline {
        // A json record may end with "\n" or "\r\n"; a line break before that is a second line.
        let body = record.strip_suffix(b"\n").unwrap_or(record);
        let body = body.strip_suffix(b"\r").unwrap_or(body);
        if at < body.len() {
            return Err(Error::new(
                ErrorKind::InvalidRecord,
                format!("json record has a line break at byte {at}: the json format is one object per line (use multijson for multi-line objects)"),
            ));
        }
    }
    if format == Format::Json
        && !json_check
        && record
            .iter()
            .all(|b| matches!(b, b' ' | b'\t' | b'\n' | b'\r'))
    {
        return Err(Error::new(
            ErrorKind::InvalidRecord,
            "json record is blank: no JSON value in the record; the record was not taken",
        ));
    }
    if format == Format::MultiJson || (format == Format::Json && json_check) {
        // One truncated line must cost that line, not the chunk it would have joined.
        if let Err(e) = json_check::check(record, format == Format::MultiJson) {
            return Err(Error::new(
                ErrorKind::InvalidRecord,
                format!(
                    "{} record is not valid JSON: {} at byte {}; the record was not taken",
                    format.wire_name(),
                    e.what,
                    e.at
                ),
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn find_line_finds_the_first_newline_and_sees_non_ascii_only_before_it() {
        for len in 0..40 {
            for nl in 0..=len {
                for high in [None, Some(0), Some(nl / 2), Some(nl + 1), Some(len)] {
                    let mut b = vec![b'x'; len + 1];
                    if nl < b.len() {
                        b[nl] = b'\n';
                    }
                    if let Some(h) = high.filter(|&h| h < b.len() && h != nl) {
                        b[h] = 0xc3;
                    }
                    let want = b.iter().position(|&c| c == b'\n').map(|at| LineEnd {
                        newline: at,
                        ascii: b[..at].is_ascii(),
                        inner_lines: 0,
                    });
                    assert_eq!(find_line(Format::Json, &b), want, "{b:?}");
                }
            }
        }
        for len in 0..30 {
            for q in 0..len {
                for other in [0u8, b'!', b'#', 0xa2, 0xff] {
                    let mut b: Vec<u8> = (0..len)
                        .map(|i| if i % 3 == 0 { other } else { b'x' })
                        .collect();
                    for i in (q..len).step_by(q + 1) {
                        b[i] = b'"';
                    }
                    let want = b.iter().filter(|&&c| c == b'"').count() % 2 == 1;
                    assert_eq!(odd_quotes(&b), want, "{b:?}");
                }
            }
        }
        assert_eq!(find_line(Format::Json, b"abc"), None);
        assert_eq!(
            find_line(Format::Csv, b"a,\"x\n\"\"y\n\",z\nnext\n"),
            Some(LineEnd {
                newline: 12,
                ascii: true,
                inner_lines: 2
            })
        );
        assert_eq!(
            find_line(Format::Tsv, b"a\t\"x\nb\n").map(|e| e.newline),
            Some(4)
        );
    }

    #[test]
    fn records_are_framed_as_lines_and_never_split() {
        let mut b = Batch::with_capacity(16);
        let now = Instant::now();
        assert!(b.fits(Format::Csv, b"a,1"));
        b.push(Format::Csv, b"a,1", now);
        b.push(Format::Csv, b"b,2\n", now);
        assert_eq!(b.bytes(), b"a,1\nb,2\n");
        assert!(b.fits(Format::Csv, b"c,3,456")); // 8 + 8 = 16
        assert!(!b.fits(Format::Csv, b"c,3,4567"));
        assert_eq!(b.capacity(), 16);
    }

    #[test]
    fn boundaries_follow_the_format_quotes_and_strings_included() {
        assert_eq!(
            records_and_middle(Format::Json, b"{}\n{}\n{}\n{}\n"),
            (4, Some(6))
        );
        // A quoted CSV newline is inside its record.
        let csv = b"1,\"a\nb\"\n2,c\n";
        assert_eq!(records_and_middle(Format::Csv, csv), (2, Some(8)));
        // Tab-separated text has no quoting: every newline ends a record.
        assert_eq!(records_and_middle(Format::Tsv, b"1\t\"a\nb\"\n").0, 2);
        // multijson: newlines inside objects and strings do not end a record.
        let mj = b"{\"a\":\n\"x\\\"\n}\"}\n{\"b\":[\n1]}\n";
        let (n, mid) = records_and_middle(Format::MultiJson, mj);
        assert_eq!(n, 2);
        assert_eq!(&mj[mid.unwrap()..], b"{\"b\":[\n1]}\n");
        assert_eq!(records_and_middle(Format::Json, b"{}\n"), (1, None));
        assert_eq!(records_and_middle(Format::Json, b"{}\n{}"), (2, Some(3)));
        assert_eq!(records_and_middle(Format::Parquet, b"PAR1\n\n"), (1, None));
    }

    #[test]
    fn retaining_ranges_keeps_whole_records_in_order() {
        let mut b = Batch::with_capacity(64);
        let now = Instant::now();
        for r in [&b"{\"a\":1}"[..], b"{\"a\":2}", b"{\"a\":3}", b"{\"a\":4}"] {
            b.push(Format::Json, r, now);
        }
        b.chunk_id = Some([7; 16]);
        b.retain_ranges(&[(8, 16), (24, 32)], 2);
        assert_eq!(b.bytes(), b"{\"a\":2}\n{\"a\":4}\n");
        assert_eq!(b.records(), 2);
        assert!(!b.is_sealed());
        assert!(b.first_at().is_some());
    }

    #[test]
    fn sealed_batch_takes_no_more_records() {
        let mut b = Batch::with_capacity(100);
        b.push(Format::Json, b"{}", Instant::now());
        b.chunk_id = Some([1; 16]);
        assert!(!b.fits(Format::Json, b"{}"));
        b.clear();
        assert!(b.fits(Format::Json, b"{}"));
        assert!(b.first_at().is_none());
    }

    #[test]
    fn binary_formats_take_one_record_per_request() {
        let mut b = Batch::with_capacity(100);
        b.push(Format::Parquet, b"PAR1...", Instant::now());
        assert_eq!(b.bytes(), b"PAR1...");
        assert!(!b.fits(Format::Parquet, b"x"));
    }

    #[test]
    fn the_one_pass_text_scan_agrees_with_the_standard_checks_at_every_offset() {
        let base: Vec<u8> = b"{\"device\":\"gw-1\",\"temp\":21.5,\"note\":\"ok\"}".to_vec();
        let inserts: [&[u8]; 6] = [
            b"\n",
            "\u{e9}".as_bytes(),
            "\u{1f600}".as_bytes(),
            b"\xff",
            b"\xe2\x82",
            b"\r\n",
        ];
        for cut in 0..=base.len() {
            for ins in inserts {
                for tail in [&b""[..], b"\n", b"\r\n", "x\u{e9}\n".as_bytes()] {
                    let mut r = base[..cut].to_vec();
                    r.extend_from_slice(ins);
                    r.extend_from_slice(&base[cut..]);
                    r.extend_from_slice(tail);
                    let s = scan_text(&r, true);
                    let want_utf8 = std::str::from_utf8(&r)
                        .map(|_| ())
                        .map_err(|e| e.valid_up_to());
                    assert_eq!(s.utf8, want_utf8, "{r:?}");
                    assert_eq!(s.newline, r.iter().position(|&b| b == b'\n'), "{r:?}");
                    assert_eq!(scan_text(&r, false).newline, None);
                }
            }
        }
    }

    #[test]
    fn validation_names_the_problem() {
        assert_eq!(
            validate_record(Format::Json, b"", 10, true)
                .unwrap_err()
                .kind,
            ErrorKind::InvalidRecord
        );
        assert_eq!(
            validate_record(Format::Json, b"0123456789", 10, true)
                .unwrap_err()
                .kind,
            ErrorKind::RecordTooLarge
        );
        assert_eq!(
            validate_record(Format::Csv, b"\xff\xfe", 10, true)
                .unwrap_err()
                .kind,
            ErrorKind::InvalidRecord
        );
        assert!(validate_record(Format::Avro, b"\xff\xfe", 10, true).is_ok());
        assert_eq!(
            validate_record(Format::Json, b"{\n}", 10, true)
                .unwrap_err()
                .kind,
            ErrorKind::InvalidRecord
        );
        assert!(validate_record(Format::MultiJson, b"{\n}", 10, true).is_ok());
        assert!(validate_record(Format::Json, b"{}\r\n", 10, true).is_ok());
        let e = validate_record(Format::Json, b"{\"t\":21.", 64, true).unwrap_err();
        assert_eq!(e.kind, ErrorKind::InvalidRecord);
        assert!(e.message.contains("not valid JSON"), "{}", e.message);
        assert!(validate_record(Format::MultiJson, b"{\"a\":\n1}\n{}", 64, true).is_ok());
        assert!(validate_record(Format::MultiJson, b"{\"a\":\n", 64, true).is_err());
        // Other text formats are not JSON-checked.
        assert!(validate_record(Format::Csv, b"{\"t\":21.", 64, true).is_ok());
    }

    #[test]
    fn without_json_check_a_json_record_is_still_checked_for_utf8_one_line_and_not_blank_and_multijson_for_syntax(
    ) {
        assert!(validate_record(Format::Json, b"{\"t\":21.", 64, false).is_ok());
        for bad in [
            &b"{\"t\":\n21}"[..],
            b"{\"t\":\"\xff\"}",
            b"",
            b" ",
            b" \t\r\n",
        ] {
            assert_eq!(
                validate_record(Format::Json, bad, 64, false)
                    .unwrap_err()
                    .kind,
                ErrorKind::InvalidRecord,
                "{}",
                String::from_utf8_lossy(bad)
            );
        }
        assert_eq!(
            validate_record(Format::Json, b"{\"t\":12345678}", 8, false)
                .unwrap_err()
                .kind,
            ErrorKind::RecordTooLarge
        );
        assert!(validate_record(Format::MultiJson, b"{\"a\":\n", 64, false).is_err());
    }
}
