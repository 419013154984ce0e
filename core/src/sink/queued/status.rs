//! Status tracking through the DM's notification queues: which chunks await a word, and what the queues say.
//!
//! The queues are shared by every producer of the cluster: a message is deleted only when its
//! `IngestionSourceId` is one of ours, and others' messages are left alone (read with a peek, which hides
//! nothing from anyone; a dequeue, which hides a page of messages for [`PAGE_HIDE_SECS`], only when a peek saw
//! one of ours or a full page of others' that may stand in front of ours; at most [`MAX_PAGES`] a poll).
//! With the status-table method the client inserts a `Pending` row before it posts the message and reads it back
//! ([`parse_row`]) until the DM has written its outcome.
//!
//! The table is bounded ([`MAX_INFLIGHT`]); an entry no word came for within [`TRACK_FOR`] is let go (with
//! failures-only reports, silence is success).

use std::time::{Duration, Instant};

use base64::alphabet;
use base64::engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig};
use base64::Engine as _;

use crate::auth::json::{walk, Scalar};
use crate::spool::DestKey;

/// Standard base64 with the padding optional, no whitespace: how notification texts are read.
const BASE64_PAD_OPTIONAL: GeneralPurpose = GeneralPurpose::new(
    &alphabet::STANDARD,
    GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent),
);

/// Chunks tracked at most.
pub const MAX_INFLIGHT: usize = 256;
/// How long a posted chunk is tracked: the DM batches for up to 5 minutes by default, then ingests.
pub const TRACK_FOR: Duration = Duration::from_secs(30 * 60);
/// Notification queues are read at most this often.
pub const POLL_EVERY: Duration = Duration::from_secs(5);
/// Status rows read at most in one round (the table method): one GET each.
pub const ROWS_PER_POLL: usize = 32;
/// Pages of a notification queue read at most in one poll: others' messages can stand in front of ours.
pub const MAX_PAGES: u32 = 8;
/// Seconds a dequeued page of others' messages stays hidden (from everyone) so that the next peek sees past it.
pub const PAGE_HIDE_SECS: u32 = 5;
/// Messages one peek or dequeue asks for (the answer must fit the sink's 32 KiB buffer).
pub const PEEK_MESSAGES: u32 = 16;

/// A chunk posted and awaiting the DM's word.
#[derive(Clone, Debug)]
pub struct Inflight {
    /// The chunk id, lowercase.
    pub id: heapless::String<36>,
    /// The id of the message that carried it: its own id, or a merged blob's.
    pub source: heapless::String<36>,
    /// Its destination.
    pub dest: DestKey,
    /// Records.
    pub records: u64,
    /// Raw bytes.
    pub raw_len: u64,
    /// Let go after this.
    pub until: Instant,
    /// With the status-table method: which of the resources' status tables holds its row.
    pub table: u8,
}

/// The bounded table of chunks awaiting a word.
#[derive(Debug, Default)]
pub struct Tracker {
    entries: Vec<Inflight>,
}

impl Tracker {
    /// An empty table, allocated up front.
    pub fn new() -> Tracker {
        Tracker {
            entries: Vec::with_capacity(MAX_INFLIGHT),
        }
    }

    /// Tracks a chunk; when the table is full the oldest entry is let go and returned (it stays `Queued`).
    pub fn add(&mut self, e: Inflight) -> Option<Inflight> {
        if let Some(old) = self.entries.iter_mut().find(|x| x.id == e.id) {
            *old = e;
            return None;
        }
        let evicted = (self.entries.len() >= MAX_INFLIGHT).then(|| self.entries.remove(0));
        self.entries.push(e);
        evicted
    }

    /// Takes the entries that message `source` carried (case-insensitive): none when it is not ours.
    pub fn take_source(&mut self, source: &str) -> Vec<Inflight> {
        let mut out = Vec::new();
        self.entries.retain(|x| {
            let ours = x.source.as_str().eq_ignore_ascii_case(source);
            if ours {
                out.push(x.clone());
            }
            !ours
        });
        out
    }

    /// Whether message `source` is ours.
    pub fn has(&self, source: &str) -> bool {
        self.entries
            .iter()
            .any(|x| x.source.as_str().eq_ignore_ascii_case(source))
    }

    /// Lets go of entries past their time.
    pub fn expire(&mut self, now: Instant) {
        self.entries.retain(|e| e.until > now);
    }

    /// The messages (sources) of up to `n` entries, in turn from `*cursor` (which moves on), each once, for
    /// reading their status rows.
    pub fn round(&self, cursor: &mut usize, n: usize) -> Vec<(heapless::String<36>, u8)> {
        let len = self.entries.len();
        let n = n.min(len);
        let start = if len == 0 { 0 } else { *cursor % len };
        *cursor = start + n;
        let mut out: Vec<(heapless::String<36>, u8)> = Vec::with_capacity(n);
        for k in 0..n {
            let e = &self.entries[(start + k) % len];
            if !out.iter().any(|(s, _)| *s == e.source) {
                out.push((e.source.clone(), e.table));
            }
        }
        out
    }

    /// Chunks awaiting a word.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// No chunk awaits a word.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

/// One message of a `QueueMessagesList` (peek or dequeue), borrowed from the answer.
#[derive(Debug, PartialEq, Eq)]
pub struct QueueMessage<'a> {
    /// `MessageId`.
    pub id: &'a str,
    /// `PopReceipt` (dequeue only).
    pub pop_receipt: Option<&'a str>,
    /// `MessageText`: base64 of the notification JSON.
    pub text: &'a str,
}

/// The messages of a Get Messages / Peek Messages answer.
pub fn parse_messages(xml: &str) -> Vec<QueueMessage<'_>> {
    let mut out = Vec::new();
    let mut rest = xml;
    while let Some(start) = rest.find("<QueueMessage>") {
        let after = &rest[start + 14..];
        let Some(end) = after.find("</QueueMessage>") else {
            break;
        };
        let m = &after[..end];
        let field = |name: &str| {
            let open = format!("<{name}>");
            let close = format!("</{name}>");
            let s = m.find(&open)? + open.len();
            let e = m[s..].find(&close)? + s;
            Some(&m[s..e])
        };
        if let (Some(id), Some(text)) = (field("MessageId"), field("MessageText")) {
            out.push(QueueMessage {
                id,
                pop_receipt: field("PopReceipt"),
                text,
            });
        }
        rest = &after[end..];
    }
    out
}

/// What a notification says, as far as we read it.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Notification {
    /// `IngestionSourceId`: our chunk id.
    pub source_id: String,
    /// `ErrorCode` (failures).
    pub error_code: String,
    /// `Details` (failures).
    pub details: String,
    /// `FailureStatus`: `Permanent`, `Transient` or `Exhausted` (failures).
    pub failure_status: String,
}

/// Decodes a notification's `MessageText` (base64 of JSON; parsed leniently: unknown fields are skipped). `None`
/// when it is not base64 of a JSON object with an `IngestionSourceId`.
pub fn parse_notification(text: &str, scratch: &mut Vec<u8>) -> Option<Notification> {
    scratch.clear();
    BASE64_PAD_OPTIONAL.decode_vec(text.trim(), scratch).ok()?;
    let mut n = Notification::default();
    walk(scratch, |path, v| {
        let Scalar::Str(s) = v else { return };
        let slot = match path {
            "IngestionSourceId" => &mut n.source_id,
            "ErrorCode" => &mut n.error_code,
            "Details" => &mut n.details,
            "FailureStatus" => &mut n.failure_status,
            _ => return,
        };
        *slot = s.chars().take(512).collect();
    })
    .ok()?;
    (!n.source_id.is_empty()).then_some(n)
}

/// A status row's `Status` and, for a failure, why (read leniently, like a notification).
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Row {
    /// `Pending`, `Succeeded`, `PartiallySucceeded`, `Failed` or `Skipped`.
    pub status: String,
    /// `ErrorCode`, `Details`, `FailureStatus` (failures).
    pub note: Notification,
}

/// Reads a Query Entity answer (`application/json;odata=nometadata`). `None` when it is not a JSON object with a
/// `Status`.
pub fn parse_row(json: &[u8]) -> Option<Row> {
    let mut r = Row::default();
    walk(json, |path, v| {
        let Scalar::Str(s) = v else { return };
        let slot = match path {
            "Status" => &mut r.status,
            "IngestionSourceId" => &mut r.note.source_id,
            "ErrorCode" => &mut r.note.error_code,
            "Details" => &mut r.note.details,
            "FailureStatus" => &mut r.note.failure_status,
            _ => return,
        };
        *slot = s.chars().take(512).collect();
    })
    .ok()?;
    (!r.status.is_empty()).then_some(r)
}

/// What a row's `Status` means for the chunk: `None` while the DM has not finished with it, `Some(true)`
/// ingested (`PartiallySucceeded` too: what was ingested must not be sent again), `Some(false)` not ingested
/// (`Failed`, `Skipped`, or a status this version does not know, which is not success).
pub fn row_done(status: &str) -> Option<bool> {
    let is = |s: &str| status.eq_ignore_ascii_case(s);
    if is("Pending") {
        None
    } else {
        Some(is("Succeeded") || is("PartiallySucceeded"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn base64_std(b: &[u8]) -> String {
        base64::engine::general_purpose::STANDARD.encode(b)
    }

    #[test]
    fn the_message_list_is_read_with_or_without_pop_receipts() {
        let xml = "<?xml version=\"1.0\" encoding=\"utf-8\"?><QueueMessagesList>\
            <QueueMessage><MessageId>m1</MessageId><InsertionTime>x</InsertionTime><PopReceipt>AgAAAA+/=</PopReceipt><DequeueCount>1</DequeueCount><MessageText>dGV4dA==</MessageText></QueueMessage>\
            <QueueMessage><MessageId>m2</MessageId><MessageText>b3RoZXI=</MessageText></QueueMessage>\
            <QueueMessage><MessageId>m3</MessageId></QueueMessage></QueueMessagesList>";
        let m = parse_messages(xml);
        assert_eq!(
            m,
            [
                QueueMessage {
                    id: "m1",
                    pop_receipt: Some("AgAAAA+/="),
                    text: "dGV4dA=="
                },
                QueueMessage {
                    id: "m2",
                    pop_receipt: None,
                    text: "b3RoZXI="
                }
            ]
        );
        assert!(parse_messages("<QueueMessagesList />").is_empty());
    }

    #[test]
    fn notifications_are_read_leniently() {
        let json = r#"{"OperationId":"op","Database":"db","Table":"T","FailedOn":"2026-12-01T19:40:00.1Z",
            "IngestionSourceId":"0b2f6c1e-8a3d-4e5f-9a1b-2c3d4e5f6a7b","IngestionSourcePath":"https://a/b",
            "Details":"Table 'T' not found","ErrorCode":"BadRequest_TableNotFound","FailureStatus":"Permanent",
            "RootActivityId":"r","OriginatesFromUpdatePolicy":false,"ShouldRetry":false,"NewField":{"x":[1,2]}}"#;
        let mut scratch = Vec::new();
        let n = parse_notification(&base64_std(json.as_bytes()), &mut scratch).unwrap();
        assert_eq!(n.source_id, "0b2f6c1e-8a3d-4e5f-9a1b-2c3d4e5f6a7b");
        assert_eq!(n.error_code, "BadRequest_TableNotFound");
        assert_eq!(n.failure_status, "Permanent");
        assert_eq!(n.details, "Table 'T' not found");
        let unpadded = base64_std(json.as_bytes()).trim_end_matches('=').to_owned();
        assert_eq!(parse_notification(&unpadded, &mut scratch).unwrap(), n);
        assert!(parse_notification("not base64!", &mut scratch).is_none());
        assert!(parse_notification(&base64_std(b"[1]"), &mut scratch).is_none());
        assert!(parse_notification(&base64_std(b"{\"Other\":1}"), &mut scratch).is_none());
    }

    #[test]
    fn the_table_is_bounded_and_knows_only_our_chunks() {
        let now = Instant::now();
        let dest = DestKey {
            database: "db".into(),
            table: "T".into(),
            format: "csv".into(),
            mapping: None,
        };
        let entry = |n: usize| Inflight {
            id: heapless::String::try_from(format!("{n:036}").as_str()).unwrap(),
            source: heapless::String::try_from(format!("{n:036}").as_str()).unwrap(),
            dest: dest.clone(),
            records: 1,
            raw_len: 1,
            until: now + Duration::from_secs(n as u64 + 1),
            table: 0,
        };
        let mut t = Tracker::new();
        for n in 0..MAX_INFLIGHT {
            assert!(t.add(entry(n)).is_none());
        }
        let evicted = t.add(entry(MAX_INFLIGHT)).unwrap();
        assert_eq!(evicted.id, entry(0).id);
        assert_eq!(t.len(), MAX_INFLIGHT);
        assert!(t.has(&entry(5).id.to_uppercase()));
        assert_eq!(t.take_source(&entry(5).id).len(), 1);
        assert!(!t.has(&entry(5).id));
        assert!(t.take_source(&entry(5).id).is_empty());
        // Entries 1..=MAX_INFLIGHT are left; those due by 100 s (n + 1 <= 100) go.
        t.expire(now + Duration::from_secs(100));
        assert_eq!(t.len(), MAX_INFLIGHT + 1 - 100);
        // Rounds visit every entry in turn, wrapping.
        let mut cursor = 0;
        let left = t.len();
        let mut seen = std::collections::HashSet::new();
        for _ in 0..left.div_ceil(32) {
            for (id, _) in t.round(&mut cursor, 32) {
                seen.insert(id);
            }
        }
        assert_eq!(seen.len(), left);
        assert_eq!(Tracker::new().round(&mut cursor, 32).len(), 0);
        // The chunks of one merged blob: tracked apiece, reported together, read once a round.
        let mut t = Tracker::new();
        let group = heapless::String::<36>::try_from("g".repeat(36).as_str()).unwrap();
        for n in 0..3 {
            let mut e = entry(n);
            e.source = group.clone();
            t.add(e);
        }
        t.add(entry(7));
        assert_eq!(t.len(), 4);
        assert_eq!(t.round(&mut 0, 32).len(), 2);
        assert!(!t.has(&entry(1).id) && t.has(&group));
        let taken: Vec<_> = t.take_source(&group).into_iter().map(|e| e.id).collect();
        assert_eq!(taken, [entry(0).id, entry(1).id, entry(2).id]);
        assert_eq!(t.len(), 1);
    }

    #[test]
    fn status_rows_are_read_leniently() {
        let r = parse_row(br#"{"PartitionKey":"a","RowKey":"a","Timestamp":"2026-12-01T19:40:00Z","Status":"Failed","ErrorCode":"BadRequest_TableNotExist","FailureStatus":"Permanent","Details":"no table","OriginatesFromUpdatePolicy":false}"#).unwrap();
        assert_eq!(r.status, "Failed");
        assert_eq!(r.note.error_code, "BadRequest_TableNotExist");
        assert_eq!(r.note.failure_status, "Permanent");
        assert_eq!(row_done(&r.status), Some(false));
        assert_eq!(row_done("Pending"), None);
        assert_eq!(row_done("Succeeded"), Some(true));
        assert_eq!(row_done("PartiallySucceeded"), Some(true));
        assert_eq!(row_done("Skipped"), Some(false));
        assert_eq!(row_done("Whatever"), Some(false));
        assert!(parse_row(b"{}").is_none());
        assert!(parse_row(b"not json").is_none());
    }
}
