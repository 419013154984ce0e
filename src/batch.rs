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

    /// Empties the batch after the service acknowledged or refused it. Keeps the allocation.
    pub fn clear(&mut self) {
        self.buf.clear();
        self.records = 0;
        self.first_at = None;
        self.chunk_id = None;
        self.attempts = 0;
    }
}

fn needs_newline(format: Format, record: &[u8]) -> bool {
    !format.one_record_per_request() && record.last() != Some(&b'\n')
}

/// Bytes a record takes in a batch: line formats end every record with a newline.
pub fn framed_len(format: Format, record: &[u8]) -> usize {
    record.len() + needs_newline(format, record) as usize
}

/// Checks a record before it is buffered, so that nothing the service can never take sits in a batch.
pub fn validate_record(format: Format, record: &[u8], capacity: usize) -> Result<(), Error> {
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
    if format.is_binary() {
        return Ok(());
    }
    if let Err(e) = std::str::from_utf8(record) {
        return Err(Error::new(
            ErrorKind::InvalidRecord,
            format!(
                "record is not valid UTF-8 (at byte {}): text formats must be UTF-8",
                e.valid_up_to()
            ),
        ));
    }
    if format == Format::Json {
        let body = record.strip_suffix(b"\n").unwrap_or(record);
        let body = body.strip_suffix(b"\r").unwrap_or(body);
        if let Some(at) = body.iter().position(|&b| b == b'\n') {
            return Err(Error::new(
                ErrorKind::InvalidRecord,
                format!("json record has a line break at byte {at}: the json format is one object per line (use multijson for multi-line objects)"),
            ));
        }
    }
    if matches!(format, Format::Json | Format::MultiJson) {
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
    fn validation_names_the_problem() {
        assert_eq!(
            validate_record(Format::Json, b"", 10).unwrap_err().kind,
            ErrorKind::InvalidRecord
        );
        assert_eq!(
            validate_record(Format::Json, b"0123456789", 10)
                .unwrap_err()
                .kind,
            ErrorKind::RecordTooLarge
        );
        assert_eq!(
            validate_record(Format::Csv, b"\xff\xfe", 10)
                .unwrap_err()
                .kind,
            ErrorKind::InvalidRecord
        );
        assert!(validate_record(Format::Avro, b"\xff\xfe", 10).is_ok());
        assert_eq!(
            validate_record(Format::Json, b"{\n}", 10).unwrap_err().kind,
            ErrorKind::InvalidRecord
        );
        assert!(validate_record(Format::MultiJson, b"{\n}", 10).is_ok());
        assert!(validate_record(Format::Json, b"{}\r\n", 10).is_ok());
        let e = validate_record(Format::Json, b"{\"t\":21.", 64).unwrap_err();
        assert_eq!(e.kind, ErrorKind::InvalidRecord);
        assert!(e.message.contains("not valid JSON"), "{}", e.message);
        assert!(validate_record(Format::MultiJson, b"{\"a\":\n1}\n{}", 64).is_ok());
        assert!(validate_record(Format::MultiJson, b"{\"a\":\n", 64).is_err());
        // Other text formats are not JSON-checked.
        assert!(validate_record(Format::Csv, b"{\"t\":21.", 64).is_ok());
    }
}
