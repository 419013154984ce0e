//! What the service checks on a streaming-ingest request, and the answers it gives.
//! Pure functions over a parsed request: no sockets, no shared state.

use crate::gzip::{self, GzipError};
use crate::http::{percent_decode, Request};

/// A OneApiError to send back.
#[derive(Debug, Clone, PartialEq)]
pub struct ApiError {
    pub status: u16,
    pub code: String,
    /// Top-level `message` (generic in the real service).
    pub message: String,
    /// `@type`: the service-side exception class.
    pub type_name: String,
    /// `@message`: the specific explanation.
    pub detail: String,
    pub permanent: bool,
}

impl ApiError {
    pub fn new(
        status: u16,
        code: &str,
        type_name: &str,
        detail: impl Into<String>,
        permanent: bool,
    ) -> ApiError {
        let message = match status {
            400 | 404 | 405 | 413 => "Request is invalid and cannot be executed.",
            401 => "Unauthorized.",
            403 => "Forbidden.",
            429 => "The request was throttled.",
            _ => "Service temporarily unavailable or internal error.",
        };
        ApiError {
            status,
            code: code.to_string(),
            message: message.to_string(),
            type_name: type_name.to_string(),
            detail: detail.into(),
            permanent,
        }
    }

    /// The OneApiError JSON body, keys in the order the service writes them.
    pub fn render(&self, client_request_id: &str, activity_id: &str, timestamp: &str) -> String {
        let q = |v: &str| serde_json::Value::from(v).to_string();
        format!(
            concat!(
                r#"{{"error":{{"code":{},"message":{},"@type":{},"@message":{},"#,
                r#""@context":{{"timestamp":{},"serviceAlias":"KUSTO-DEVSERVER","machineName":"KEngine000000","#,
                r#""processName":"kusto-devserver","clientRequestId":{},"activityId":{},"subActivityId":{},"#,
                r#""activityType":"DN.FE.StreamingIngest"}},"@permanent":{},"@failureCode":{}}}}}"#
            ),
            q(&self.code),
            q(&self.message),
            q(&self.type_name),
            q(&self.detail),
            q(timestamp),
            q(client_request_id),
            q(activity_id),
            q(activity_id),
            self.permanent,
            self.status
        )
    }
}

const REQ_EXC: &str = "Kusto.DataNode.Exceptions.StreamingIngestionRequestException";

/// 400 permanent with the generic streaming-request exception type.
pub fn bad_request(code: &str, detail: impl Into<String>) -> ApiError {
    ApiError::new(400, code, REQ_EXC, detail, true)
}

pub fn entity_not_found(kind: &str, name: &str) -> ApiError {
    ApiError::new(
        400,
        "BadRequest_EntityNotFound",
        "Kusto.Data.Exceptions.EntityNotFoundException",
        format!("Entity ID '{name}' of kind '{kind}' was not found."),
        true,
    )
}

pub fn streaming_disabled(db: &str, table: &str) -> ApiError {
    ApiError::new(
        400,
        "BadRequest_StreamingIngestionPolicyNotEnabled",
        "Kusto.DataNode.Exceptions.StreamingIngestionPolicyNotEnabledException",
        format!(
            "Streaming ingestion policy is not enabled for table '{table}' in database '{db}'."
        ),
        true,
    )
}

pub fn unauthorized(detail: &str) -> ApiError {
    ApiError::new(
        401,
        "Unauthorized",
        "Kusto.Common.Svc.Exceptions.UnauthorizedOperationException",
        detail,
        true,
    )
}

pub fn forbidden(db: &str, table: &str) -> ApiError {
    ApiError::new(
        403,
        "Forbidden",
        "Kusto.DataNode.Exceptions.UnauthorizedDatabaseAccessException",
        format!("Principal is not authorized to ingest into table '{table}' in database '{db}'."),
        true,
    )
}

pub fn throttled() -> ApiError {
    ApiError::new(
        429,
        "General_ThrottledIngestion",
        "Kusto.Data.Exceptions.KustoRequestThrottledException",
        "The streaming ingestion request was throttled: too many concurrent requests.",
        false,
    )
}

pub fn internal_error(status: u16) -> ApiError {
    ApiError::new(
        status,
        "General_InternalServerError",
        "Kusto.DataNode.Exceptions.InternalServerError",
        "InternalServerError",
        false,
    )
}

pub fn too_large(detail: impl Into<String>) -> ApiError {
    ApiError::new(413, "Stream_InputStreamTooLarge", REQ_EXC, detail, true)
}

/// How records are cut out of a body.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    /// One record per non-empty line.
    Lines,
    /// CSV records (RFC 4180): a newline inside a quoted field belongs to the record.
    CsvRecords,
    /// One JSON object per non-empty line.
    JsonLines,
    /// JSON objects one after another.
    MultiJson,
    /// The whole body is one JSON value.
    SingleJson,
    /// The whole body is one opaque record.
    Binary,
}

/// The canonical (lowercase) format name and its framing, or `None` if the service does not know it.
pub fn format_framing(name: &str) -> Option<(&'static str, Framing)> {
    const ALL: &[(&str, Framing)] = &[
        ("csv", Framing::CsvRecords),
        ("tsv", Framing::Lines),
        ("scsv", Framing::CsvRecords),
        ("sohsv", Framing::CsvRecords),
        ("psv", Framing::CsvRecords),
        ("txt", Framing::Lines),
        ("tsve", Framing::Lines),
        ("raw", Framing::Lines),
        ("w3clogfile", Framing::Lines),
        ("json", Framing::JsonLines),
        ("singlejson", Framing::SingleJson),
        ("multijson", Framing::MultiJson),
        ("avro", Framing::Binary),
        ("apacheavro", Framing::Binary),
        ("parquet", Framing::Binary),
        ("orc", Framing::Binary),
        ("sstream", Framing::Binary),
    ];
    ALL.iter()
        .find(|(n, _)| n.eq_ignore_ascii_case(name))
        .map(|&(n, f)| (n, f))
}

/// Where an ingest request goes, from its path and query.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Target {
    pub database: String,
    pub table: String,
    /// As sent (empty if missing).
    pub format: String,
    pub mapping: Option<String>,
    pub source_kind: Option<String>,
}

pub const INGEST_PREFIX: &str = "/v1/rest/ingest/";

/// `Some` when the path is `/v1/rest/ingest/{db}/{table}` (segments percent-decoded).
pub fn parse_target(req: &Request) -> Option<Target> {
    let rest = req.path.strip_prefix(INGEST_PREFIX)?;
    let mut segs = rest.split('/');
    let (db, table) = match (segs.next(), segs.next(), segs.next()) {
        (Some(d), Some(t), None) if !d.is_empty() && !t.is_empty() => (d, t),
        _ => return None,
    };
    let mut target = Target {
        database: percent_decode(db, false),
        table: percent_decode(table, false),
        ..Target::default()
    };
    for (k, v) in req.query_pairs() {
        if k.eq_ignore_ascii_case("streamFormat") {
            target.format = v;
        } else if k.eq_ignore_ascii_case("mappingName") {
            target.mapping = Some(v);
        } else if k.eq_ignore_ascii_case("sourceKind") {
            target.source_kind = Some(v);
        }
    }
    Some(target)
}

/// The chunk a request carries, from its `x-ms-client-request-id`: the id without a trailing `;<attempt>`.
/// kusto-edge sends `KEC.executeStreamingIngest;{chunk};{attempt}` and the SDKs' managed streaming
/// `...;{sourceId};{attempt}`, so every resend of one chunk has its own request id but the same chunk id. An id
/// without a numeric last field (the SDKs' `KPC.executeStreamingIngest;{uuid}`) is its own chunk id.
pub fn chunk_id(client_request_id: &str) -> &str {
    match client_request_id.rsplit_once(';') {
        Some((chunk, attempt))
            if !chunk.is_empty()
                && !attempt.is_empty()
                && attempt.bytes().all(|b| b.is_ascii_digit()) =>
        {
            chunk
        }
        _ => client_request_id,
    }
}

/// Check the headers every SDK sends; returns the client request id.
pub fn check_headers(req: &Request) -> Result<String, ApiError> {
    let crid = req.header("x-ms-client-request-id").unwrap_or("");
    if crid.is_empty() {
        return Err(bad_request(
            "General_BadRequest",
            "Header 'x-ms-client-request-id' is missing or empty.",
        ));
    }
    if !crid.bytes().all(|b| (0x20..0x7f).contains(&b)) {
        return Err(bad_request(
            "General_BadRequest",
            "Header 'x-ms-client-request-id' must be printable ASCII.",
        ));
    }
    if req.header("x-ms-version").is_none_or(str::is_empty) {
        return Err(bad_request(
            "General_BadRequest",
            "Header 'x-ms-version' is missing or empty.",
        ));
    }
    Ok(crid.to_string())
}

/// Check the bearer token when one is configured.
pub fn check_auth(req: &Request, token: Option<&str>) -> Result<(), ApiError> {
    let Some(want) = token else { return Ok(()) };
    let got = req.header("authorization").unwrap_or("");
    match got.split_once(' ') {
        Some((scheme, t)) if scheme.eq_ignore_ascii_case("bearer") && t.trim() == want => Ok(()),
        Some((scheme, _)) if scheme.eq_ignore_ascii_case("bearer") => {
            Err(unauthorized("The bearer token is invalid or expired."))
        }
        _ => Err(unauthorized(
            "Authorization header with a bearer token is required.",
        )),
    }
}

/// The body as raw data, inflated if `Content-Encoding: gzip`. Returns (raw, was_gzip).
pub fn decode_body(req: &Request, max_raw: usize) -> Result<(Vec<u8>, bool), ApiError> {
    let enc = req
        .header("content-encoding")
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    match enc.as_str() {
        "" | "identity" => {
            if req.body.len() > max_raw {
                return Err(too_large(format!(
                    "Request body of {} bytes exceeds the streaming ingestion limit of {} bytes.",
                    req.body.len(),
                    max_raw
                )));
            }
            Ok((req.body.clone(), false))
        }
        "gzip" | "x-gzip" => match gzip::gunzip(&req.body, max_raw) {
            Ok(raw) => Ok((raw, true)),
            Err(GzipError::TooLarge) => Err(too_large(format!(
                "Uncompressed data exceeds the streaming ingestion limit of {max_raw} bytes."
            ))),
            Err(GzipError::Bad(why)) => Err(bad_request(
                "BadRequest_InvalidArchive",
                format!("The request body is not valid gzip: {why}."),
            )),
        },
        other => Err(bad_request(
            "BadRequest_NotSupported",
            format!("Content-Encoding '{other}' is not supported."),
        )),
    }
}

fn no_records() -> ApiError {
    bad_request("Stream_NoDataToIngest", "Found no data to ingest.")
}

fn wrong_format(detail: String) -> ApiError {
    bad_request("BadRequest_NoRecordsOrWrongFormat", detail)
}

/// Cut the raw data into records, all or nothing.
pub fn split_records(framing: Framing, raw: &[u8]) -> Result<Vec<Vec<u8>>, ApiError> {
    let lines = || {
        raw.split(|&b| b == b'\n')
            .map(|l| l.strip_suffix(b"\r").unwrap_or(l))
            .filter(|l| !l.is_empty())
    };
    let records: Vec<Vec<u8>> = match framing {
        Framing::Lines => lines().map(<[u8]>::to_vec).collect(),
        Framing::CsvRecords => {
            let mut out = Vec::new();
            let mut start = 0;
            let mut quoted = false;
            for (i, &b) in raw.iter().enumerate() {
                match b {
                    b'"' => quoted = !quoted,
                    b'\n' if !quoted => {
                        out.push(&raw[start..i]);
                        start = i + 1;
                    }
                    _ => {}
                }
            }
            if quoted {
                return Err(wrong_format(
                    "csv data ends inside a quoted field.".to_owned(),
                ));
            }
            out.push(&raw[start..]);
            out.into_iter()
                .map(|l| l.strip_suffix(b"\r").unwrap_or(l))
                .filter(|l| !l.is_empty())
                .map(<[u8]>::to_vec)
                .collect()
        }
        Framing::JsonLines => {
            let mut out = Vec::new();
            for (i, line) in lines().enumerate() {
                if line.iter().all(u8::is_ascii_whitespace) {
                    continue;
                }
                match serde_json::from_slice::<serde_json::Value>(line) {
                    Ok(v) if v.is_object() => out.push(line.to_vec()),
                    Ok(_) => {
                        return Err(wrong_format(format!(
                            "json record {} is not a JSON object.",
                            i + 1
                        )))
                    }
                    Err(e) => {
                        return Err(wrong_format(format!(
                            "json record {} is not valid JSON: {e}.",
                            i + 1
                        )))
                    }
                }
            }
            out
        }
        Framing::MultiJson => {
            let mut out = Vec::new();
            let mut stream =
                serde_json::Deserializer::from_slice(raw).into_iter::<serde_json::Value>();
            let mut start = 0;
            while let Some(item) = stream.next() {
                let end = stream.byte_offset();
                match item {
                    Ok(v) if v.is_object() => {
                        let bytes = &raw[start..end];
                        let skip = bytes.iter().take_while(|b| b.is_ascii_whitespace()).count();
                        out.push(bytes[skip..].to_vec());
                    }
                    Ok(_) => {
                        return Err(wrong_format(format!(
                            "multijson value {} is not a JSON object.",
                            out.len() + 1
                        )))
                    }
                    Err(e) => {
                        return Err(wrong_format(format!(
                            "multijson data is not valid JSON: {e}."
                        )))
                    }
                }
                start = end;
            }
            out
        }
        Framing::SingleJson => {
            let trimmed = raw.trim_ascii();
            if trimmed.is_empty() {
                Vec::new()
            } else {
                serde_json::from_slice::<serde_json::Value>(trimmed).map_err(|e| {
                    wrong_format(format!("singlejson data is not valid JSON: {e}."))
                })?;
                vec![trimmed.to_vec()]
            }
        }
        Framing::Binary => {
            if raw.is_empty() {
                Vec::new()
            } else {
                vec![raw.to_vec()]
            }
        }
    };
    if records.is_empty() {
        return Err(no_records());
    }
    Ok(records)
}

/// The v1 data set the service answers a successful streaming ingest with.
pub fn success_body(records: usize) -> String {
    format!(
        concat!(
            r#"{{"Tables":[{{"TableName":"Table_0","Columns":["#,
            r#"{{"ColumnName":"ConsumedRecordsCount","DataType":"Int64"}},"#,
            r#"{{"ColumnName":"UpdatePolicyStatus","DataType":"String"}},"#,
            r#"{{"ColumnName":"UpdatePolicyFailureCode","DataType":"String"}},"#,
            r#"{{"ColumnName":"UpdatePolicyFailureReason","DataType":"String"}}],"#,
            r#""Rows":[[{},"Inactive","Unknown",null]]}}]}}"#
        ),
        records
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn line_formats_split_on_lines() {
        let r = split_records(Framing::Lines, b"a,1\r\n\nb,2\nc,3").unwrap();
        assert_eq!(r, vec![b"a,1".to_vec(), b"b,2".to_vec(), b"c,3".to_vec()]);
        assert_eq!(
            split_records(Framing::Lines, b"\n\r\n").unwrap_err().code,
            "Stream_NoDataToIngest"
        );
    }

    #[test]
    fn json_lines_are_all_or_nothing() {
        let r = split_records(Framing::JsonLines, b"{\"a\":1}\r\n{\"a\":2}\n").unwrap();
        assert_eq!(r.len(), 2);
        let e = split_records(Framing::JsonLines, b"{\"a\":1}\n{\"a\":\n").unwrap_err();
        assert!(e.permanent && e.status == 400);
        assert!(split_records(Framing::JsonLines, b"[1,2]\n").is_err());
    }

    #[test]
    fn multijson_keeps_exact_object_bytes() {
        let r = split_records(
            Framing::MultiJson,
            b"{\"a\": 1}{\"b\":[2]}\n\n  {\"c\":{\"d\":3}}\n",
        )
        .unwrap();
        assert_eq!(
            r,
            vec![
                b"{\"a\": 1}".to_vec(),
                b"{\"b\":[2]}".to_vec(),
                b"{\"c\":{\"d\":3}}".to_vec()
            ]
        );
        assert!(split_records(Framing::MultiJson, b"{\"a\":1}{").is_err());
        assert!(split_records(Framing::MultiJson, b"{\"a\":1} 7").is_err());
    }

    #[test]
    fn single_and_binary() {
        assert_eq!(
            split_records(Framing::SingleJson, b" {\"a\":\n1}\n").unwrap(),
            vec![b"{\"a\":\n1}".to_vec()]
        );
        assert_eq!(
            split_records(Framing::Binary, b"\0\n\x01").unwrap().len(),
            1
        );
    }

    #[test]
    fn chunk_id_is_the_request_id_without_its_attempt() {
        let c = "KEC.executeStreamingIngest;0b9d6b1e-7c53-4b0e-9a39-2f6c1d6a0f11";
        assert_eq!(chunk_id(&format!("{c};1")), c);
        assert_eq!(chunk_id(&format!("{c};12")), c);
        // No attempt field: the whole id is the chunk's (the SDKs' plain streaming ids).
        assert_eq!(chunk_id(c), c);
        assert_eq!(chunk_id("r1"), "r1");
        assert_eq!(chunk_id("a;b;x1"), "a;b;x1");
        assert_eq!(chunk_id("a;"), "a;");
        assert_eq!(chunk_id(";7"), ";7");
    }

    #[test]
    fn formats_are_case_insensitive() {
        assert_eq!(
            format_framing("MultiJSON"),
            Some(("multijson", Framing::MultiJson))
        );
        assert_eq!(format_framing("Parquet").unwrap().1, Framing::Binary);
        assert!(format_framing("xml").is_none());
    }

    #[test]
    fn error_body_has_the_one_api_error_shape_in_service_order() {
        let e = entity_not_found("Table", "T\"x");
        let text = e.render("KEC.a;1", "0000-1", "2024-01-01T00:00:00.0000000Z");
        assert!(
            text.starts_with(r#"{"error":{"code":"BadRequest_EntityNotFound","message":"#),
            "{text}"
        );
        let v: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert_eq!(
            v["error"]["@message"],
            "Entity ID 'T\"x' of kind 'Table' was not found."
        );
        assert_eq!(v["error"]["@context"]["clientRequestId"], "KEC.a;1");
        assert_eq!(v["error"]["@permanent"], true);
        assert_eq!(v["error"]["@failureCode"], 400);
    }

    #[test]
    fn success_body_is_valid_json_of_the_v1_shape() {
        let v: serde_json::Value = serde_json::from_str(&success_body(3)).unwrap();
        assert_eq!(v["Tables"][0]["Rows"][0][0], 3);
        assert_eq!(
            v["Tables"][0]["Columns"][0]["ColumnName"],
            "ConsumedRecordsCount"
        );
        assert!(v["Tables"][0]["Rows"][0][3].is_null());
    }
}
