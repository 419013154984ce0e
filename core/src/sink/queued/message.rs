//! The ingestion message, byte for byte as the SDKs send it (`kusto-queued.md` §4): JSON with PascalCase keys at
//! the top and camelCase inside `AdditionalProperties`, base64 inside `<QueueMessage><MessageText>`. Built into
//! the caller's buffers, so a send allocates nothing once they have grown to their bound.

use std::fmt::Write as _;
use std::time::{SystemTime, UNIX_EPOCH};

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;

use crate::auth::encoding::json_string_into;

/// The JSON must stay under this: its base64 may be at most 65,536 characters (65,537 gets 413).
pub const MAX_JSON_BYTES: usize = 48 * 1024;

/// What goes into one message.
pub struct Message<'a> {
    /// The source id: the chunk id, lowercase uuid text.
    pub id: &'a str,
    /// The blob URL with its SAS (secret).
    pub blob_path: &'a str,
    /// Uncompressed bytes.
    pub raw_size: u64,
    /// Database.
    pub database: &'a str,
    /// Table.
    pub table: &'a str,
    /// `ReportLevel`: 0 failures, 1 none, 2 all.
    pub report_level: u8,
    /// `ReportMethod`: 0 queue, 1 table.
    pub report_method: u8,
    /// `SourceMessageCreationTime`, from the client's wall clock.
    pub created: SystemTime,
    /// `ApplicationForTracing` (`x-ms-app`).
    pub app: &'a str,
    /// `ClientVersionForTracing` (`x-ms-client-version`).
    pub client_version: &'a str,
    /// The DM's identity token (secret).
    pub authorization_context: &'a str,
    /// The format's wire name.
    pub format: &'a str,
    /// The mapping reference, if any.
    pub mapping: Option<&'a str>,
    /// With `ReportMethod` 1: the status table's URL with its SAS (secret), whose row `(Id, Id)` the client
    /// inserted as `Pending` before posting.
    pub status_table: Option<&'a str>,
}

/// Writes the JSON of `m` into `out` (cleared first). `false` when it would exceed [`MAX_JSON_BYTES`].
pub fn write_json(m: &Message<'_>, out: &mut String) -> bool {
    out.clear();
    out.push_str("{\"Id\":");
    json_string_into(m.id, out);
    out.push_str(",\"BlobPath\":");
    json_string_into(m.blob_path, out);
    let _ = write!(out, ",\"RawDataSize\":{}", m.raw_size);
    out.push_str(",\"DatabaseName\":");
    json_string_into(m.database, out);
    out.push_str(",\"TableName\":");
    json_string_into(m.table, out);
    out.push_str(
        ",\"RetainBlobOnSuccess\":true,\"FlushImmediately\":false,\"IgnoreSizeLimit\":false",
    );
    let _ = write!(
        out,
        ",\"ReportLevel\":{},\"ReportMethod\":{}",
        m.report_level, m.report_method
    );
    out.push_str(",\"SourceMessageCreationTime\":\"");
    write_time(m.created, out);
    out.push_str("\",\"ApplicationForTracing\":");
    json_string_into(m.app, out);
    out.push_str(",\"ClientVersionForTracing\":");
    json_string_into(m.client_version, out);
    if let Some(table) = m.status_table {
        out.push_str(",\"IngestionStatusInTable\":{\"TableConnectionString\":");
        json_string_into(table, out);
        out.push_str(",\"PartitionKey\":");
        json_string_into(m.id, out);
        out.push_str(",\"RowKey\":");
        json_string_into(m.id, out);
        out.push('}');
    }
    out.push_str(",\"AdditionalProperties\":{\"authorizationContext\":");
    json_string_into(m.authorization_context, out);
    out.push_str(",\"format\":");
    json_string_into(m.format, out);
    if let Some(map) = m.mapping {
        out.push_str(",\"ingestionMappingReference\":");
        json_string_into(map, out);
        // The official SDK names the mapping's kind beside the reference.
        let kind = crate::wire::Format::parse(m.format).map_or("Csv", |f| f.mapping_kind());
        out.push_str(",\"ingestionMappingType\":");
        json_string_into(kind, out);
    }
    out.push_str("}}");
    out.len() < MAX_JSON_BYTES
}

/// The status table's `Pending` row for a chunk (`kusto-queued.md` §5), into `out` (cleared first): partition
/// and row key are the chunk id, the path is the blob's URL without its SAS.
pub fn write_status_row(
    id: &str,
    blob_path: &str,
    database: &str,
    table: &str,
    now: SystemTime,
    out: &mut String,
) {
    out.clear();
    out.push_str("{\"PartitionKey\":");
    json_string_into(id, out);
    out.push_str(",\"RowKey\":");
    json_string_into(id, out);
    out.push_str(",\"Status\":\"Pending\",\"IngestionSourceId\":");
    json_string_into(id, out);
    out.push_str(",\"IngestionSourcePath\":");
    json_string_into(super::storage::without_query(blob_path), out);
    out.push_str(",\"Database\":");
    json_string_into(database, out);
    out.push_str(",\"Table\":");
    json_string_into(table, out);
    out.push_str(",\"UpdatedOn\":\"");
    write_time(now, out);
    out.push_str("\"}");
}

/// The Put Message body for `json`, into `out` (cleared first): standard base64 of the UTF-8 JSON, so that the
/// SAS's `&` never meets the XML.
pub fn write_queue_body(json: &str, out: &mut String) {
    out.clear();
    out.push_str("<QueueMessage><MessageText>");
    STANDARD.encode_string(json, out);
    out.push_str("</MessageText></QueueMessage>");
}

/// `2026-12-01T19:35:12.1234567Z`: seven fractional digits, as .NET's round-trip format (what the SDKs send).
pub fn write_time(t: SystemTime, out: &mut String) {
    let d = t.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = d.as_secs();
    let (y, mo, day) = civil_from_days((secs / 86400) as i64);
    let s = secs % 86400;
    let _ = write!(
        out,
        "{y:04}-{mo:02}-{day:02}T{:02}:{:02}:{:02}.{:07}Z",
        s / 3600,
        s / 60 % 60,
        s % 60,
        d.subsec_nanos() / 100
    );
}

/// The proleptic Gregorian date of a day count since 1970-01-01 (Howard Hinnant's algorithm).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719468;
    let era = z.div_euclid(146097);
    let doe = z - era * 146097;
    let yoe = (doe - doe / 1460 + doe / 36524 - doe / 146096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn example() -> Message<'static> {
        Message {
            id: "0b2f6c1e-8a3d-4e5f-9a1b-2c3d4e5f6a7b",
            blob_path: "https://acct2.blob.core.windows.net/c/db__T__0b2f6c1e-8a3d-4e5f-9a1b-2c3d4e5f6a7b.multijson.gz?sv=2019-12-12&sig=a%2Bb",
            raw_size: 12345,
            database: "db",
            table: "T",
            report_level: 0,
            report_method: 0,
            // 2026-12-01T19:35:12.1234567Z
            created: UNIX_EPOCH + Duration::new(1_796_153_712, 123_456_700),
            app: "gw",
            client_version: "Kusto.Edge.Client:0.1.0",
            authorization_context: "tok\"en",
            format: "multijson",
            mapping: Some("m1"),
            status_table: None,
        }
    }

    #[test]
    fn the_json_is_the_documented_shape_byte_for_byte() {
        let mut out = String::new();
        assert!(write_json(&example(), &mut out));
        let want = concat!(
            r#"{"Id":"0b2f6c1e-8a3d-4e5f-9a1b-2c3d4e5f6a7b","#,
            r#""BlobPath":"https://acct2.blob.core.windows.net/c/db__T__0b2f6c1e-8a3d-4e5f-9a1b-2c3d4e5f6a7b.multijson.gz?sv=2019-12-12&sig=a%2Bb","#,
            r#""RawDataSize":12345,"DatabaseName":"db","TableName":"T","#,
            r#""RetainBlobOnSuccess":true,"FlushImmediately":false,"IgnoreSizeLimit":false,"#,
            r#""ReportLevel":0,"ReportMethod":0,"#,
            r#""SourceMessageCreationTime":"2026-12-01T19:35:12.1234567Z","#,
            r#""ApplicationForTracing":"gw","ClientVersionForTracing":"Kusto.Edge.Client:0.1.0","#,
            r#""AdditionalProperties":{"authorizationContext":"tok\"en","format":"multijson","#,
            r#""ingestionMappingReference":"m1","ingestionMappingType":"Json"}}"#
        );
        assert_eq!(out, want);
        // Without a mapping the key is left out, not sent empty.
        let mut m = example();
        m.mapping = None;
        write_json(&m, &mut out);
        assert!(out.ends_with(r#""format":"multijson"}}"#), "{out}");
    }

    #[test]
    fn table_reporting_names_the_row_the_client_inserted() {
        let mut m = example();
        m.report_method = 1;
        m.status_table =
            Some("http://127.0.0.1:10002/devstoreaccount1/ingestionsstatus?sv=1&sig=s");
        let mut out = String::new();
        assert!(write_json(&m, &mut out));
        assert!(out.contains(concat!(
            r#""ClientVersionForTracing":"Kusto.Edge.Client:0.1.0","#,
            r#""IngestionStatusInTable":{"TableConnectionString":"http://127.0.0.1:10002/devstoreaccount1/ingestionsstatus?sv=1&sig=s","#,
            r#""PartitionKey":"0b2f6c1e-8a3d-4e5f-9a1b-2c3d4e5f6a7b","RowKey":"0b2f6c1e-8a3d-4e5f-9a1b-2c3d4e5f6a7b"},"#,
            r#""AdditionalProperties""#
        )), "{out}");
        write_status_row(m.id, m.blob_path, "db", "T", m.created, &mut out);
        assert_eq!(
            out,
            concat!(
                r#"{"PartitionKey":"0b2f6c1e-8a3d-4e5f-9a1b-2c3d4e5f6a7b","RowKey":"0b2f6c1e-8a3d-4e5f-9a1b-2c3d4e5f6a7b","#,
                r#""Status":"Pending","IngestionSourceId":"0b2f6c1e-8a3d-4e5f-9a1b-2c3d4e5f6a7b","#,
                r#""IngestionSourcePath":"https://acct2.blob.core.windows.net/c/db__T__0b2f6c1e-8a3d-4e5f-9a1b-2c3d4e5f6a7b.multijson.gz","#,
                r#""Database":"db","Table":"T","UpdatedOn":"2026-12-01T19:35:12.1234567Z"}"#
            )
        );
        assert!(!out.contains("sig="));
    }

    #[test]
    fn the_queue_body_is_base64_of_the_json_in_xml() {
        let mut json = String::new();
        write_json(&example(), &mut json);
        let mut xml = String::new();
        write_queue_body(&json, &mut xml);
        let inner = xml
            .strip_prefix("<QueueMessage><MessageText>")
            .and_then(|s| s.strip_suffix("</MessageText></QueueMessage>"))
            .unwrap();
        assert!(!inner.contains('&') && !inner.contains('<'));
        assert_eq!(inner, STANDARD.encode(&json));
        // Known vector: base64("{\"Id\":") = eyJJZCI6
        assert!(inner.starts_with("eyJJZCI6"), "{inner}");
    }

    #[test]
    fn an_oversized_message_is_refused() {
        let big = "x".repeat(MAX_JSON_BYTES);
        let mut m = example();
        m.authorization_context = &big;
        let mut out = String::new();
        assert!(!write_json(&m, &mut out));
    }

    #[test]
    fn times_have_seven_fractional_digits() {
        let mut s = String::new();
        write_time(UNIX_EPOCH, &mut s);
        assert_eq!(s, "1970-01-01T00:00:00.0000000Z");
        s.clear();
        // 2000-02-29T23:59:59.9999999Z: a leap day.
        write_time(UNIX_EPOCH + Duration::new(951_868_799, 999_999_900), &mut s);
        assert_eq!(s, "2000-02-29T23:59:59.9999999Z");
    }
}
