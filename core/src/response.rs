//! Reading the service's answer: the v1 data set of a success, the OneApiError of a failure, `Retry-After`, and
//! the classification every retry decision rests on. Pure functions over bounded input, driven by tests and
//! fuzzing without a network.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::de::{self, Deserializer, Visitor};
use serde::Deserialize;

/// How a failure is handled.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FailureClass {
    /// Network trouble, throttling, 5xx, `@permanent: false`: retry with backoff.
    Transient,
    /// The data itself is refused: never send it again as is.
    Rejected,
    /// Table, database, mapping or streaming policy missing, endpoint missing: keep the data, retry slowly.
    TargetNotReady,
    /// 401/403: keep the data; the credentials need fixing (or refreshing).
    Auth,
}

/// A failed request, as much as the answer told.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Failure {
    /// How to handle it.
    pub class: FailureClass,
    /// HTTP status; 0 when there was no answer.
    pub status: u16,
    /// The OneApiError `code`, when there was one.
    pub code: heapless::String<96>,
    /// The service's message (or ours for network errors), truncated to a bounded length.
    pub message: heapless::String<512>,
    /// `Retry-After`, when the answer carried a valid one.
    pub retry_after: Option<Duration>,
}

impl Failure {
    /// A failure with no HTTP answer (connection refused, reset, timeout).
    pub fn network(message: &str) -> Failure {
        Failure {
            class: FailureClass::Transient,
            status: 0,
            code: heapless::String::new(),
            message: truncated(message),
            retry_after: None,
        }
    }

    /// What the caller should do, in a sentence.
    pub fn advice(&self) -> &'static str {
        match self.class {
            FailureClass::Transient => "the data is kept and retried",
            FailureClass::Rejected => "the service refused this data permanently; it will not be sent again",
            FailureClass::Auth => "check the token and that the principal may ingest into this table (Database Ingestor role)",
            FailureClass::TargetNotReady if self.status == 404 && self.code.is_empty() => {
                "the streaming endpoint was not found: enable streaming ingestion on the cluster and check the url"
            }
            FailureClass::TargetNotReady if contains_ci(&self.code, "Streaming") => {
                "enable the streaming ingestion policy on the table or database; the data is kept"
            }
            FailureClass::TargetNotReady if contains_ci(&self.code, "Mapping") => {
                "create the ingestion mapping on the table; the data is kept"
            }
            FailureClass::TargetNotReady if (300..400).contains(&self.status) => {
                "the service redirected, which no client follows: check the cluster url"
            }
            // No answer at all (DNS, proxy, TLS trust): the message names the setting to fix; "create the
            // table" would send the operator to the wrong place.
            FailureClass::TargetNotReady if self.status == 0 => {
                "fix what the message names; the data is kept and retried slowly until then"
            }
            // An answer without a Kusto error code was most likely written by something else on the way.
            FailureClass::TargetNotReady if self.code.is_empty() => {
                "the answer did not come from Kusto: check the cluster url and any proxy on the way; the data is kept"
            }
            FailureClass::TargetNotReady => {
                "create the table (or database), or wait up to 5 minutes after creating it; the data is kept"
            }
        }
    }
}

/// The outcome of one request.
// A failure is a fixed-size value on purpose: handling one must not allocate.
#[allow(clippy::large_enum_variant)]
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Reply {
    /// HTTP 200 with a result: the chunk is acknowledged.
    Acknowledged {
        /// `ConsumedRecordsCount` when the result had it.
        consumed: Option<u64>,
    },
    /// Anything else.
    Failed(Failure),
}

pub(crate) fn truncated<const N: usize>(s: &str) -> heapless::String<N> {
    let mut out = heapless::String::new();
    for c in s.chars() {
        if c.is_control() && c != ' ' {
            continue;
        }
        if out.push(c).is_err() {
            break;
        }
    }
    out
}

fn contains_ci(hay: &str, needle: &str) -> bool {
    hay.to_ascii_lowercase()
        .contains(&needle.to_ascii_lowercase())
}

/// A string field that keeps at most N bytes instead of failing on a long value: a server's long message must not
/// turn into "unparseable answer".
struct Trunc<const N: usize>(heapless::String<N>);

impl<'de, const N: usize> Deserialize<'de> for Trunc<N> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V<const N: usize>;
        impl<const N: usize> Visitor<'_> for V<N> {
            type Value = Trunc<N>;
            fn expecting(&self, f: &mut core::fmt::Formatter) -> core::fmt::Result {
                f.write_str("a string")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
                Ok(Trunc(truncated(v)))
            }
        }
        d.deserialize_str(V::<N>)
    }
}

#[derive(Deserialize)]
struct OneApiError {
    error: OneApiErrorBody,
}

#[derive(Deserialize)]
struct OneApiErrorBody {
    code: Option<Trunc<96>>,
    message: Option<Trunc<512>>,
    #[serde(rename = "@message")]
    at_message: Option<Trunc<512>>,
    #[serde(rename = "@permanent")]
    permanent: Option<bool>,
}

struct ParsedError {
    code: heapless::String<96>,
    message: heapless::String<512>,
    permanent: Option<bool>,
}

/// Parses a OneApiError body with fixed-size fields. `scratch` holds unescaped strings; its size bounds them.
fn parse_error_body(body: &[u8], scratch: &mut [u8]) -> Option<ParsedError> {
    let (e, _) = serde_json_core::from_slice_escaped::<OneApiError>(body, scratch).ok()?;
    let e = e.error;
    let message = match (e.at_message, e.message) {
        (Some(m), _) if !m.0.is_empty() => m.0,
        (_, Some(m)) => m.0,
        _ => heapless::String::new(),
    };
    Some(ParsedError {
        code: e.code.map(|c| c.0).unwrap_or_default(),
        message,
        permanent: e.permanent,
    })
}

/// The `code` of a OneApiError whose body was cut at the read limit (or is otherwise not whole JSON): the service
/// writes `{"error":{"code":...` first, so a long Kusto error is still recognised as one. `@permanent` comes last
/// and is lost with the cut, so no verdict is claimed.
fn sniff_error_code(body: &[u8]) -> Option<ParsedError> {
    let mut p = crate::json::Parser::new(body);
    p.eat(b'{')?;
    (p.string()? == b"error").then_some(())?;
    p.eat(b':')?;
    p.eat(b'{')?;
    (p.string()? == b"code").then_some(())?;
    p.eat(b':')?;
    let code = std::str::from_utf8(p.string()?).ok()?;
    if code.is_empty() {
        return None;
    }
    Some(ParsedError {
        code: truncated(code),
        message: truncated("the service's error was too long to read whole"),
        permanent: None,
    })
}

/// The start of a body as one line of text for a message: whitespace runs collapsed, at most 160 characters.
fn body_excerpt(body: &[u8]) -> heapless::String<200> {
    let text = String::from_utf8_lossy(&body[..body.len().min(400)]);
    let mut out = heapless::String::new();
    for word in text.split_whitespace() {
        if !out.is_empty() && out.push(' ').is_err() {
            break;
        }
        for c in word.chars().filter(|c| !c.is_control()) {
            if out.len() >= 160 || out.push(c).is_err() {
                return out;
            }
        }
    }
    out
}

/// Codes that mean "the target is not there (yet)": they heal when an operator acts or schema changes propagate.
const NOT_READY_MARKERS: &[&str] = &[
    "NotFound",
    "NotExist",
    "StreamingIngestionPolicyNotEnabled",
    "StreamingDisabled",
    "Disabled",
    "Unauthorized",
    "Forbidden",
];

/// Classifies an answer. `retry_after` is the raw header, `body` a bounded prefix of the body.
pub fn classify(
    status: u16,
    retry_after: Option<&str>,
    body: &[u8],
    now: SystemTime,
    scratch: &mut [u8],
) -> Reply {
    let retry_after = retry_after.and_then(|v| parse_retry_after(v, now));
    if status == 200 {
        return match parse_consumed(body) {
            Some(consumed) => Reply::Acknowledged { consumed },
            None => Reply::Failed(Failure {
                class: FailureClass::Transient,
                status,
                code: heapless::String::new(),
                message: truncated("the service answered 200 without a result; the chunk is resent (at-least-once)"),
                retry_after,
            }),
        };
    }
    // Only a OneApiError that says something (a code or a verdict) is Kusto's own; anything else at this status was
    // most likely written by a proxy, a gateway or whatever the URL really points at.
    let parsed = parse_error_body(body, scratch)
        .filter(|p| !p.code.is_empty() || p.permanent.is_some())
        .or_else(|| sniff_error_code(body));
    let from_kusto = parsed.is_some();
    let (code, mut message, permanent) = match parsed {
        Some(p) => (p.code, p.message, p.permanent),
        None => (heapless::String::new(), heapless::String::new(), None),
    };
    if status == 400 && !from_kusto {
        // Rejecting would drop (or quarantine) good data because of a box on the way: keep it, and say so.
        let text = body_excerpt(body);
        message = if text.is_empty() {
            truncated("the 400 did not come from Kusto (empty body, no Kusto error): likely a proxy or a wrong cluster URL")
        } else {
            truncated(&format!(
                "the 400 did not come from Kusto (no Kusto error in the body): likely a proxy or a wrong cluster URL; the body began: {text}"
            ))
        };
    }
    if message.is_empty() {
        let text = std::str::from_utf8(&body[..body.len().min(200)])
            .unwrap_or("")
            .trim();
        message = if text.is_empty() || text.starts_with('{') {
            truncated(&format!("HTTP {status} {}", reason(status)))
        } else {
            truncated(&format!("HTTP {status}: {text}"))
        };
    }
    let not_ready = NOT_READY_MARKERS.iter().any(|m| contains_ci(&code, m));
    let class = match status {
        401 | 403 => FailureClass::Auth,
        408 | 429 | 500..=599 => FailureClass::Transient,
        404 => FailureClass::TargetNotReady,
        400 if !from_kusto => FailureClass::TargetNotReady,
        _ if not_ready => FailureClass::TargetNotReady,
        _ if permanent == Some(false) => FailureClass::Transient,
        400 | 413 | 415 | 422 => FailureClass::Rejected,
        300..=399 => FailureClass::TargetNotReady,
        _ if permanent == Some(true) => FailureClass::Rejected,
        // An unknown status without a verdict: keep the data, an operator will look.
        _ => FailureClass::TargetNotReady,
    };
    Reply::Failed(Failure {
        class,
        status,
        code,
        message,
        retry_after,
    })
}

fn reason(status: u16) -> &'static str {
    match status {
        301 | 302 | 307 | 308 => "redirect",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        408 => "Request Timeout",
        413 => "Payload Too Large",
        429 => "Too Many Requests",
        500 => "Internal Server Error",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        504 => "Gateway Timeout",
        _ => "",
    }
}

/// `Retry-After` as delay-seconds or an IMF-fixdate (`Sun, 06 Nov 1994 08:49:37 GMT`). A date in the past is zero.
/// Delay-seconds too large for a `u64` are `Duration::MAX`: the server asked for a very long wait, and the caller
/// caps every wait at `backoff.max` anyway. Negative numbers and garbage are no delay at all (`None`).
pub fn parse_retry_after(v: &str, now: SystemTime) -> Option<Duration> {
    let v = v.trim();
    match v.parse::<u64>() {
        Ok(secs) => return Some(Duration::from_secs(secs)),
        // Ignoring it would retry at once, the opposite of what the server asked for. Digits only: the parser's
        // own error kind is not a promise about what a '-' or a stray letter further on is reported as.
        Err(_) if !v.is_empty() && v.bytes().all(|b| b.is_ascii_digit()) => {
            return Some(Duration::MAX)
        }
        Err(_) => {}
    }
    let at = parse_http_date(v)?;
    let now = now.duration_since(UNIX_EPOCH).ok()?.as_secs();
    Some(Duration::from_secs(at.saturating_sub(now)))
}

fn parse_http_date(v: &str) -> Option<u64> {
    // "Sun, 06 Nov 1994 08:49:37 GMT"
    let mut it = v.split_ascii_whitespace();
    let _weekday = it.next()?.strip_suffix(',')?;
    let day: u64 = it.next()?.parse().ok()?;
    let month_name = it.next()?;
    let month = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ]
    .iter()
    .position(|m| *m == month_name)? as u64
        + 1;
    // IMF-fixdate years have four digits; anything else is a server that lies, and unchecked calendar
    // arithmetic on it would overflow (found by fuzzing).
    let year: i64 = it
        .next()?
        .parse()
        .ok()
        .filter(|y| (1970..=9999).contains(y))?;
    let mut hms = it.next()?.split(':').map(|p| p.parse::<u64>().ok());
    let (h, m, s) = (hms.next()??, hms.next()??, hms.next()??);
    if it.next()? != "GMT"
        || it.next().is_some()
        || !(1..=31).contains(&day)
        || h > 23
        || m > 59
        || s > 60
    {
        return None;
    }
    let days = days_from_civil(year, month, day)?;
    Some(days * 86400 + h * 3600 + m * 60 + s)
}

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's algorithm).
fn days_from_civil(y: i64, m: u64, d: u64) -> Option<u64> {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = (y - era * 400) as u64;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146097 + doe as i64 - 719468;
    u64::try_from(days).ok()
}

/// Finds `ConsumedRecordsCount` in a v1 data set: `Some(None)` for a valid data set without it, `None` when the
/// body is not a data set at all.
pub fn parse_consumed(body: &[u8]) -> Option<Option<u64>> {
    let mut p = crate::json::Parser::new(body);
    let mut column = None;
    let mut first_row: Option<usize> = None;
    let mut saw_tables = false;
    p.object(|p, key| {
        if key != b"Tables" {
            return p.skip_value();
        }
        saw_tables = true;
        let mut index = 0;
        p.array(|p| {
            if index > 0 {
                index += 1;
                return p.skip_value();
            }
            index += 1;
            p.object(|p, key| match key {
                b"Columns" => {
                    let mut i = 0;
                    p.array(|p| {
                        let here = i;
                        i += 1;
                        p.object(|p, key| {
                            if key == b"ColumnName" {
                                if p.string()? == b"ConsumedRecordsCount" {
                                    column = Some(here);
                                }
                                Some(())
                            } else {
                                p.skip_value()
                            }
                        })
                    })
                }
                b"Rows" => {
                    first_row = Some(p.pos());
                    p.skip_value()
                }
                _ => p.skip_value(),
            })
        })
    })?;
    if !p.at_end() || !saw_tables {
        return None;
    }
    let (Some(col), Some(rows_at)) = (column, first_row) else {
        return Some(None);
    };
    let mut p = crate::json::Parser::at(body, rows_at);
    let mut value = None;
    let mut row_index = 0;
    p.array(|p| {
        if row_index > 0 {
            return p.skip_value();
        }
        row_index += 1;
        let mut i = 0;
        p.array(|p| {
            let here = i;
            i += 1;
            if here == col {
                value = p.number();
                Some(())
            } else {
                p.skip_value()
            }
        })
    })?;
    Some(value)
}

#[cfg(test)]
mod tests {
    use super::*;

    const OK: &str = r#"{"Tables":[{"TableName":"Table_0","Columns":[{"ColumnName":"ConsumedRecordsCount","DataType":"Int64"},{"ColumnName":"UpdatePolicyStatus","DataType":"String"},{"ColumnName":"UpdatePolicyFailureCode","DataType":"String"},{"ColumnName":"UpdatePolicyFailureReason","DataType":"String"}],"Rows":[[42,"Inactive","Unknown",null]]}]}"#;

    fn run(status: u16, ra: Option<&str>, body: &str) -> Reply {
        let mut scratch = [0u8; 2048];
        classify(
            status,
            ra,
            body.as_bytes(),
            UNIX_EPOCH + Duration::from_secs(784111777),
            &mut scratch,
        )
    }

    fn failure(r: Reply) -> Failure {
        match r {
            Reply::Failed(f) => f,
            other => panic!("expected a failure, got {other:?}"),
        }
    }

    #[test]
    fn success_reads_consumed_record_count() {
        assert_eq!(
            run(200, None, OK),
            Reply::Acknowledged { consumed: Some(42) }
        );
        let second_col = r#"{"Tables":[{"Columns":[{"ColumnName":"X"},{"ColumnName":"ConsumedRecordsCount"}],"Rows":[["a","7"]]}]}"#;
        assert_eq!(
            run(200, None, second_col),
            Reply::Acknowledged { consumed: Some(7) }
        );
        assert_eq!(
            run(200, None, r#"{"Tables":[]}"#),
            Reply::Acknowledged { consumed: None }
        );
    }

    #[test]
    fn empty_or_garbage_200_is_resent_not_trusted() {
        for body in ["", "OK", "{\"Tables\":", "[1,2]", "{\"x\":1}"] {
            assert_eq!(
                failure(run(200, None, body)).class,
                FailureClass::Transient,
                "{body:?}"
            );
        }
    }

    #[test]
    fn permanent_data_errors_are_rejected_and_not_ready_targets_are_kept() {
        let bad = r#"{"error":{"code":"BadRequest_InvalidData","message":"bad \"json\" at line 3","@type":"X","@message":"","@context":{"timestamp":"t","activityId":"a"},"@permanent":true,"@failureCode":400}}"#;
        let f = failure(run(400, None, bad));
        assert_eq!(f.class, FailureClass::Rejected);
        assert_eq!(f.code.as_str(), "BadRequest_InvalidData");
        assert_eq!(f.message.as_str(), "bad \"json\" at line 3");

        let missing = r#"{"error":{"code":"BadRequest_EntityNotFound","message":"Entity 'T' of kind 'Table' was not found.","@permanent":true}}"#;
        assert_eq!(
            failure(run(400, None, missing)).class,
            FailureClass::TargetNotReady
        );
        let policy = r#"{"error":{"code":"BadRequest_StreamingIngestionPolicyNotEnabled","message":"off","@permanent":true}}"#;
        let f = failure(run(400, None, policy));
        assert_eq!(f.class, FailureClass::TargetNotReady);
        assert!(f.advice().contains("streaming ingestion policy"));

        let temp = r#"{"error":{"code":"Whatever","message":"try again","@permanent":false}}"#;
        assert_eq!(failure(run(400, None, temp)).class, FailureClass::Transient);
    }

    #[test]
    fn a_400_without_a_kusto_error_body_is_kept_not_rejected() {
        for body in [
            "",
            "   \r\n",
            "<html><head><title>400 Bad Request</title></head><body><center><h1>400 Bad Request</h1></center><hr><center>nginx</center></body></html>",
            "Bad Request",
            "{}",
            r#"{"message":"invalid request"}"#,
            r#"{"error":"bad_request"}"#,
            r#"{"error":{}}"#,
            r#"{"error":{"message":"no code, no verdict"}}"#,
            "[1,2,3]",
        ] {
            let f = failure(run(400, None, body));
            assert_eq!(f.class, FailureClass::TargetNotReady, "{body:?}");
            assert!(f.code.is_empty(), "{body:?}");
            assert!(
                f.message.contains("did not come from Kusto")
                    && f.message.contains("proxy")
                    && f.message.contains("cluster URL"),
                "{body:?}: {}",
                f.message
            );
            assert!(f.advice().contains("did not come from Kusto"), "{}", f.advice());
            assert!(!f.advice().contains("create the table"), "{}", f.advice());
        }
        // The page's own words help whoever reads the log find the box that wrote it.
        let f = failure(run(
            400,
            None,
            "<html>\n  <title>Squid: request\n denied</title></html>",
        ));
        assert!(
            f.message
                .ends_with("the body began: <html> <title>Squid: request denied</title></html>"),
            "{}",
            f.message
        );
    }

    #[test]
    fn a_400_with_a_kusto_error_body_follows_its_code_and_verdict() {
        // A code alone (no verdict) is Kusto's: a 400 from the service is a refusal of the data.
        let f = failure(run(
            400,
            None,
            r#"{"error":{"code":"BadRequest_SyntaxError","message":"x"}}"#,
        ));
        assert_eq!(f.class, FailureClass::Rejected);
        // A verdict alone is Kusto's too.
        let f = failure(run(
            400,
            None,
            r#"{"error":{"message":"bad","@permanent":true}}"#,
        ));
        assert_eq!(f.class, FailureClass::Rejected);
        let f = failure(run(
            400,
            None,
            r#"{"error":{"message":"later","@permanent":false}}"#,
        ));
        assert_eq!(f.class, FailureClass::Transient);
        // The devserver's (and the service's) body, cut at the read limit before `@permanent`: still Kusto's, and
        // its code still decides.
        let cut = r#"{"error":{"code":"BadRequest_EntityNotFound","message":"Request is invalid and cannot be executed.","@type":"Kusto.Data.Exceptions.EntityNotFoundException","@message":"Entity ID 'T' of kind 'Table' was not fo"#;
        let f = failure(run(400, None, cut));
        assert_eq!(f.class, FailureClass::TargetNotReady);
        assert_eq!(f.code.as_str(), "BadRequest_EntityNotFound");
        assert!(f.advice().contains("create the table"), "{}", f.advice());
        let cut = r#"{"error":{"code":"Stream_WrongNumberOfFields","message":"Inconsis"#;
        let f = failure(run(400, None, cut));
        assert_eq!(f.class, FailureClass::Rejected);
        assert_eq!(f.code.as_str(), "Stream_WrongNumberOfFields");
        assert!(!f.message.is_empty());
    }

    #[test]
    fn statuses_classify_like_the_sdks() {
        assert_eq!(
            failure(run(429, Some("3"), "")).class,
            FailureClass::Transient
        );
        assert_eq!(
            failure(run(429, Some("3"), "")).retry_after,
            Some(Duration::from_secs(3))
        );
        assert_eq!(
            failure(run(503, None, "<html>")).class,
            FailureClass::Transient
        );
        assert_eq!(failure(run(401, None, "")).class, FailureClass::Auth);
        assert_eq!(failure(run(403, None, "")).class, FailureClass::Auth);
        let nf = failure(run(404, None, ""));
        assert_eq!(nf.class, FailureClass::TargetNotReady);
        assert!(nf.advice().contains("enable streaming ingestion"));
        assert_eq!(
            failure(run(302, None, "")).class,
            FailureClass::TargetNotReady
        );
        assert_eq!(failure(run(413, None, "")).class, FailureClass::Rejected);
    }

    #[test]
    fn long_messages_are_truncated_not_refused() {
        let long = "x".repeat(5000);
        let body = format!(
            r#"{{"error":{{"code":"BadRequest_X","message":"{long}","@permanent":true}}}}"#
        );
        let mut scratch = vec![0u8; 8192];
        let f = failure(classify(
            400,
            None,
            body.as_bytes(),
            SystemTime::now(),
            &mut scratch,
        ));
        assert_eq!(f.message.len(), 512);
        assert_eq!(f.class, FailureClass::Rejected);
    }

    #[test]
    fn retry_after_accepts_seconds_and_http_dates() {
        let now = UNIX_EPOCH + Duration::from_secs(784111777); // Sun, 06 Nov 1994 08:49:37 GMT
        assert_eq!(
            parse_retry_after("120", now),
            Some(Duration::from_secs(120))
        );
        assert_eq!(
            parse_retry_after("Sun, 06 Nov 1994 08:49:47 GMT", now),
            Some(Duration::from_secs(10))
        );
        assert_eq!(
            parse_retry_after("Sun, 06 Nov 1994 08:00:00 GMT", now),
            Some(Duration::ZERO)
        );
        assert_eq!(parse_retry_after("soon", now), None);
        assert_eq!(parse_retry_after("-1", now), None);
        assert_eq!(parse_retry_after("", now), None);
        assert_eq!(parse_retry_after("1.5", now), None);
        assert_eq!(
            parse_retry_after("Sun, 32 Nov 1994 08:49:47 GMT", now),
            None
        );
        // The fuzzer's finds (fuzz/artifacts/classify_response): dates whose calendar arithmetic overflowed.
        for date in [
            "Sun, 06 Nov 584554051224 08:49:37 GMT",
            "Sun, 06 Nov 1000000000000000000 08:49:37 GMT",
            "Sun, 06 Jan -9223372036854775808 08:49:37 GMT",
            "Sun, 06 Nov 10000 08:49:37 GMT",
        ] {
            assert_eq!(parse_retry_after(date, now), None, "{date}");
        }
    }

    #[test]
    fn retry_after_beyond_the_integer_range_is_the_longest_wait_not_ignored() {
        let now = UNIX_EPOCH + Duration::from_secs(784111777);
        assert_eq!(
            parse_retry_after("99999999999999999999", now),
            Some(Duration::MAX)
        );
        assert_eq!(
            parse_retry_after(" 18446744073709551616 ", now),
            Some(Duration::MAX)
        );
        assert_eq!(
            parse_retry_after("18446744073709551615", now),
            Some(Duration::from_secs(u64::MAX))
        );
        // Too negative is still negative: no delay was asked for.
        assert_eq!(parse_retry_after("-99999999999999999999", now), None);
        assert_eq!(parse_retry_after("99999999999999999999x", now), None);
        // And the caller's cap applies: backoff.max, never a wait of centuries.
        let f = failure(run(429, Some("99999999999999999999"), ""));
        assert_eq!(f.retry_after, Some(Duration::MAX));
        let cap = Duration::from_secs(300);
        assert_eq!(
            crate::retry::Backoff {
                base: Duration::from_secs(1),
                max: Duration::from_secs(1),
                retry_after_cap: cap
            }
            .delay(1, u32::MAX, f.retry_after),
            cap
        );
    }

    #[test]
    fn garbage_never_panics() {
        let mut x = 12345u64;
        let mut scratch = [0u8; 256];
        for n in 0..2000 {
            let len = n % 300;
            let body: Vec<u8> = (0..len)
                .map(|_| {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    b"{}[]\",:0123456789 aTRCsu\\e-"[(x % 27) as usize]
                })
                .collect();
            let _ = classify(200, Some("x"), &body, SystemTime::now(), &mut scratch);
            let _ = classify(400, None, &body, SystemTime::now(), &mut scratch);
        }
        let deep = "[".repeat(10_000);
        assert!(parse_consumed(deep.as_bytes()).is_none());
    }
}
