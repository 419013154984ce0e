//! Status tracking through the DM's notification queues: which chunks await a word, and what the queues say.
//!
//! The queues are shared by every producer of the cluster: a message is deleted only when its
//! `IngestionSourceId` is one of ours, and others' messages are left alone (read with a peek, which hides
//! nothing from anyone; a dequeue, which hides messages for a second, only when a peek saw one of ours).
//! The table is bounded ([`MAX_INFLIGHT`]); an entry no word came for within [`TRACK_FOR`] is let go (with
//! failures-only reports, silence is success).

use std::time::{Duration, Instant};

use crate::auth::encoding::base64_std_decode;
use crate::auth::json::{walk, Scalar};
use crate::spool::DestKey;

/// Chunks tracked at most.
pub const MAX_INFLIGHT: usize = 256;
/// How long a posted chunk is tracked: the DM batches for up to 5 minutes by default, then ingests.
pub const TRACK_FOR: Duration = Duration::from_secs(30 * 60);
/// Notification queues are read at most this often.
pub const POLL_EVERY: Duration = Duration::from_secs(5);
/// Messages one peek or dequeue asks for (the answer must fit the sink's 32 KiB buffer).
pub const PEEK_MESSAGES: u32 = 16;

/// A chunk posted and awaiting the DM's word.
#[derive(Clone, Debug)]
pub struct Inflight {
    /// The chunk id (the message's `Id`, lowercase).
    pub id: heapless::String<36>,
    /// Its destination.
    pub dest: DestKey,
    /// Records.
    pub records: u64,
    /// Raw bytes.
    pub raw_len: u64,
    /// Let go after this.
    pub until: Instant,
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

    /// Takes the entry of `id` (case-insensitive), if it is ours.
    pub fn take(&mut self, id: &str) -> Option<Inflight> {
        let i = self
            .entries
            .iter()
            .position(|x| x.id.as_str().eq_ignore_ascii_case(id))?;
        Some(self.entries.remove(i))
    }

    /// Whether `id` is ours.
    pub fn has(&self, id: &str) -> bool {
        self.entries
            .iter()
            .any(|x| x.id.as_str().eq_ignore_ascii_case(id))
    }

    /// Lets go of entries past their time.
    pub fn expire(&mut self, now: Instant) {
        self.entries.retain(|e| e.until > now);
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
    if !base64_std_decode(text.trim(), scratch) {
        return None;
    }
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::encoding::base64_std;

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
            dest: dest.clone(),
            records: 1,
            raw_len: 1,
            until: now + Duration::from_secs(n as u64 + 1),
        };
        let mut t = Tracker::new();
        for n in 0..MAX_INFLIGHT {
            assert!(t.add(entry(n)).is_none());
        }
        let evicted = t.add(entry(MAX_INFLIGHT)).unwrap();
        assert_eq!(evicted.id, entry(0).id);
        assert_eq!(t.len(), MAX_INFLIGHT);
        assert!(t.has(&entry(5).id.to_uppercase()));
        assert!(t.take(&entry(5).id).is_some());
        assert!(!t.has(&entry(5).id));
        // Entries 1..=MAX_INFLIGHT are left; those due by 100 s (n + 1 <= 100) go.
        t.expire(now + Duration::from_secs(100));
        assert_eq!(t.len(), MAX_INFLIGHT + 1 - 100);
    }
}
