//! Azure Storage as the queued sink uses it: blob names and URLs, the queue's message URL, and what a storage
//! answer means. Pure functions; the SAS stays inside [`SecretString`]s and never reaches a message.
//!
//! How a storage answer is handled (`classify`):
//!
//! | answer | class | also |
//! |---|---|---|
//! | 2xx | success | |
//! | 403 (`AuthenticationFailed`, `AuthorizationFailure`, ...: SAS expired or revoked) | auth | refresh the resources, retry once |
//! | 404 (`ContainerNotFound`, `QueueNotFound`, ...) | target not ready | refresh the resources; next resource |
//! | 408, 429, 500, 502, 503 (`ServerBusy`), 504, `OperationTimedOut`, 409 (lease or delete in progress) | transient | next resource |
//! | 413, 400 `RequestBodyTooLarge` / `MessageTooLarge` / `InvalidBlobOrBlock` | rejected | |
//! | other 4xx, 3xx | target not ready (the data is kept) | |
//! | no answer | as the network classifier says (transient) | next resource |

use crate::response::{Failure, FailureClass};
use crate::secret::SecretString;

/// What one storage answer means.
#[derive(Debug)]
pub struct Verdict {
    /// The failure, classified.
    pub failure: Failure,
    /// The resources (SAS URLs) should be fetched again.
    pub refresh: bool,
    /// Another account or container may do better.
    pub next: bool,
}

/// Classifies a storage error answer (`status` not 2xx) from its XML body: `op` names the operation
/// (`upload`, `enqueue`) and `account` the storage account, for the message. Only `<Code>` and the first line of
/// `<Message>` are read: `<AuthenticationErrorDetail>` may quote the request's signature.
pub fn classify(status: u16, body: &[u8], op: &str, account: &str) -> Verdict {
    let text = std::str::from_utf8(body).unwrap_or("");
    // Blob and queue answer XML; the table service answers JSON (`{"odata.error":{"code":"..",
    // "message":{"lang":"en-US","value":".."}}}`).
    let code = between(text, "<Code>", "</Code>")
        .or_else(|| between(text, "\"code\":\"", "\""))
        .unwrap_or("");
    let detail = between(text, "<Message>", "</Message>")
        .or_else(|| between(text, "\"value\":\"", "\""))
        .map(|m| m.split(['\n', '\r']).next().unwrap_or(""))
        .unwrap_or("");
    let is = |c: &str| code.eq_ignore_ascii_case(c);
    let (class, refresh, next) = match status {
        403 => (FailureClass::Auth, true, false),
        404 => (FailureClass::TargetNotReady, true, true),
        408 | 429 | 500 | 502 | 503 | 504 | 409 => (FailureClass::Transient, false, true),
        _ if is("ServerBusy") || is("OperationTimedOut") || is("InternalError") => {
            (FailureClass::Transient, false, true)
        }
        413 => (FailureClass::Rejected, false, false),
        400 if is("RequestBodyTooLarge") || is("MessageTooLarge") || is("InvalidBlobOrBlock") => {
            (FailureClass::Rejected, false, false)
        }
        _ => (FailureClass::TargetNotReady, false, false),
    };
    let mut f = Failure::network("");
    f.class = class;
    f.status = status;
    let _ = f.code.push_str(&code[..code.len().min(f.code.capacity())]);
    let mut msg = format!("storage {op} on account '{account}' answered {status}");
    if !code.is_empty() {
        msg.push(' ');
        msg.push_str(code);
    }
    if !detail.is_empty() {
        msg.push_str(": ");
        msg.push_str(&scrub(detail));
    }
    f.message = crate::response::truncated(&msg);
    Verdict {
        failure: f,
        refresh,
        next,
    }
}

/// Cuts anything from `sig=` on: storage messages do not quote signatures, but a message is no place to find out.
pub(crate) fn scrub(s: &str) -> String {
    match s.find("sig=") {
        Some(i) => format!("{}[...]", &s[..i]),
        None => s.to_owned(),
    }
}

fn between<'a>(s: &'a str, open: &str, close: &str) -> Option<&'a str> {
    let start = s.find(open)? + open.len();
    let end = s[start..].find(close)? + start;
    Some(s[start..end].trim())
}

/// The blob's name for a chunk: `{db}__{table}__{chunk id}.{format}.gz` (`.{format}` for a binary format sent as
/// it is). The same chunk always gets the same name, so a resend after a failure or a reboot overwrites its blob
/// instead of duplicating it; characters outside `[A-Za-z0-9._-]` become `_`.
pub fn blob_name(database: &str, table: &str, chunk_id: &str, format: &str, gzip: bool) -> String {
    let mut s = String::with_capacity(database.len() + table.len() + chunk_id.len() + 24);
    let mut safe = |part: &str| {
        for c in part.chars().take(100) {
            s.push(
                if c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-') {
                    c
                } else {
                    '_'
                },
            );
        }
    };
    safe(database);
    safe("__");
    safe(table);
    safe("__");
    safe(chunk_id);
    safe(".");
    safe(format);
    if gzip {
        s.push_str(".gz");
    }
    s
}

/// `{container path}/{blob}?{sas}` from the container's URL (`https://acct.../container?sas`), built inside a
/// secret string.
pub fn blob_url(container: &SecretString, blob: &str) -> SecretString {
    append_path(container, blob)
}

/// `{queue path}/messages?{sas}` from the queue's URL.
pub fn messages_url(queue: &SecretString) -> SecretString {
    append_path(queue, "messages")
}

fn append_path(base: &SecretString, segment: &str) -> SecretString {
    let u = base.expose();
    let (path, query) = match u.split_once('?') {
        Some((p, q)) => (p, Some(q)),
        None => (u, None),
    };
    let mut out = SecretString::new(String::with_capacity(u.len() + segment.len() + 2));
    out.push_str(path.trim_end_matches('/'));
    out.push_str("/");
    out.push_str(segment);
    if let Some(q) = query {
        out.push_str("?");
        out.push_str(q);
    }
    out
}

/// The id of block `i` of a merged blob: base64 of a fixed-length name (a blob's block ids must all have the same
/// length), to be percent-encoded in the query.
pub fn block_id(i: usize) -> String {
    base64::Engine::encode(
        &base64::engine::general_purpose::STANDARD,
        format!("kedge-block-{i:06}"),
    )
}

/// `{table path}(PartitionKey='{id}',RowKey='{id}')?{sas}`: the status row of a chunk (its id is a uuid: no
/// quote to double, nothing to encode).
pub fn entity_url(table: &SecretString, id: &str) -> SecretString {
    let u = table.expose();
    let (path, sas) = u.split_once('?').unwrap_or((u, ""));
    let mut out = SecretString::new(String::with_capacity(u.len() + 2 * id.len() + 32));
    out.push_str(path.trim_end_matches('/'));
    out.push_str("(PartitionKey='");
    out.push_str(id);
    out.push_str("',RowKey='");
    out.push_str(id);
    out.push_str("')");
    if !sas.is_empty() {
        out.push_str("?");
        out.push_str(sas);
    }
    out
}

/// `{path}/{segment}?{query}&{sas}` from a storage URL (`segment` and `query` already encoded).
pub fn with_query(base: &SecretString, segment: &str, query: &str) -> SecretString {
    let u = base.expose();
    let (path, sas) = u.split_once('?').unwrap_or((u, ""));
    let mut out = SecretString::new(String::with_capacity(
        u.len() + segment.len() + query.len() + 3,
    ));
    out.push_str(path.trim_end_matches('/'));
    out.push_str("/");
    out.push_str(segment);
    out.push_str("?");
    out.push_str(query);
    if !sas.is_empty() {
        out.push_str("&");
        out.push_str(sas);
    }
    out
}

/// A URL without its query (the SAS), for messages and the status table's `IngestionSourcePath`.
pub fn without_query(url: &str) -> &str {
    url.split(['?', '#']).next().unwrap_or("")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err(code: &str, msg: &str) -> Vec<u8> {
        format!("\u{feff}<?xml version=\"1.0\" encoding=\"utf-8\"?><Error><Code>{code}</Code><Message>{msg}\nRequestId:1\nTime:2026</Message><AuthenticationErrorDetail>Signature sig=SECRET</AuthenticationErrorDetail></Error>").into_bytes()
    }

    #[test]
    fn storage_answers_are_classified_as_the_table_says() {
        use FailureClass::*;
        // (status, code, class, refresh, next)
        let table: &[(u16, &str, FailureClass, bool, bool)] = &[
            (403, "AuthenticationFailed", Auth, true, false),
            (403, "AuthorizationPermissionMismatch", Auth, true, false),
            (404, "ContainerNotFound", TargetNotReady, true, true),
            (404, "QueueNotFound", TargetNotReady, true, true),
            (500, "InternalError", Transient, false, true),
            (503, "ServerBusy", Transient, false, true),
            (500, "OperationTimedOut", Transient, false, true),
            (408, "", Transient, false, true),
            (429, "", Transient, false, true),
            (409, "LeaseIdMissing", Transient, false, true),
            (413, "RequestBodyTooLarge", Rejected, false, false),
            (400, "RequestBodyTooLarge", Rejected, false, false),
            (400, "MessageTooLarge", Rejected, false, false),
            (400, "InvalidHeaderValue", TargetNotReady, false, false),
            (400, "MissingRequiredHeader", TargetNotReady, false, false),
            (301, "", TargetNotReady, false, false),
        ];
        for &(status, code, class, refresh, next) in table {
            let v = classify(status, &err(code, "Server failed."), "upload", "acct");
            assert_eq!(
                (v.failure.class, v.refresh, v.next),
                (class, refresh, next),
                "{status} {code}"
            );
            assert_eq!(v.failure.status, status);
            assert_eq!(v.failure.code.as_str(), code);
        }
    }

    #[test]
    fn the_message_names_the_account_and_never_the_signature() {
        let v = classify(
            403,
            &err(
                "AuthenticationFailed",
                "Server failed to authenticate the request.",
            ),
            "upload",
            "acct2",
        );
        let m = v.failure.message.as_str();
        assert_eq!(m, "storage upload on account 'acct2' answered 403 AuthenticationFailed: Server failed to authenticate the request.");
        let v = classify(
            500,
            b"<Error><Message>x sig=abc</Message></Error>",
            "enqueue",
            "a",
        );
        assert!(!v.failure.message.contains("abc"), "{}", v.failure.message);
        // The table service's JSON error.
        let v = classify(
            403,
            br#"{"odata.error":{"code":"AuthorizationFailure","message":{"lang":"en-US","value":"This request is not authorized."}}}"#,
            "status row",
            "a",
        );
        assert_eq!(v.failure.code.as_str(), "AuthorizationFailure");
        assert!(v.refresh);
        assert!(
            v.failure
                .message
                .ends_with("AuthorizationFailure: This request is not authorized."),
            "{}",
            v.failure.message
        );
        // Not XML at all: the status still decides.
        let v = classify(503, b"gateway", "enqueue", "a");
        assert_eq!(v.failure.class, FailureClass::Transient);
    }

    #[test]
    fn blob_names_are_stable_safe_and_end_in_the_format() {
        let id = "0b2f6c1e-8a3d-4e5f-9a1b-2c3d4e5f6a7b";
        assert_eq!(
            blob_name("db", "T", id, "multijson", true),
            "db__T__0b2f6c1e-8a3d-4e5f-9a1b-2c3d4e5f6a7b.multijson.gz"
        );
        assert_eq!(
            blob_name("my db", "T/1", id, "parquet", false),
            "my_db__T_1__0b2f6c1e-8a3d-4e5f-9a1b-2c3d4e5f6a7b.parquet"
        );
        assert_eq!(
            blob_name("db", "T", id, "csv", true),
            blob_name("db", "T", id, "csv", true)
        );
    }

    #[test]
    fn urls_keep_the_sas_after_the_new_path() {
        let c = SecretString::new("https://a.blob.core.windows.net/cont?sv=1&sig=x");
        assert_eq!(
            blob_url(&c, "b.csv.gz").expose(),
            "https://a.blob.core.windows.net/cont/b.csv.gz?sv=1&sig=x"
        );
        let q = SecretString::new("http://127.0.0.1:10001/devstoreaccount1/q?sv=1");
        assert_eq!(
            messages_url(&q).expose(),
            "http://127.0.0.1:10001/devstoreaccount1/q/messages?sv=1"
        );
        assert_eq!(without_query("https://a/c/b?sig=1"), "https://a/c/b");
        assert_eq!(block_id(0), "a2VkZ2UtYmxvY2stMDAwMDAw");
        assert_eq!(block_id(0).len(), block_id(999_999).len());
        let t = SecretString::new("http://127.0.0.1:10002/devstoreaccount1/ingestionsstatus?sv=1");
        assert_eq!(
            entity_url(&t, "id-1").expose(),
            "http://127.0.0.1:10002/devstoreaccount1/ingestionsstatus(PartitionKey='id-1',RowKey='id-1')?sv=1"
        );
        assert_eq!(
            with_query(&q, "messages/m1", "popreceipt=a%2B").expose(),
            "http://127.0.0.1:10001/devstoreaccount1/q/messages/m1?popreceipt=a%2B&sv=1"
        );
    }
}
