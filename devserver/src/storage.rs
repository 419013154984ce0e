//! The few Azure Storage REST calls the data-management side (and the tests that play a client) make:
//! containers, blobs, queue messages and table entities, over [`crate::client`], each on a URL that
//! already carries its SAS.

use std::time::Duration;

use crate::azurite::StorageEndpoints;
use crate::client::{self, ClientResponse};
use crate::sas::{Sas, SasResource, SAS_VERSION};

/// `x-ms-version` sent on every storage request (Azurite 3.37 accepts up to 2026-06-06).
pub const STORAGE_VERSION: &str = "2022-11-02";

const TIMEOUT: Duration = Duration::from_secs(10);

/// One message taken or peeked from a queue.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct QueueMessage {
    pub id: String,
    /// Empty when peeked.
    pub pop_receipt: String,
    /// The message text as stored (for Kusto: base64 of JSON).
    pub text: String,
    pub dequeue_count: u32,
}

/// A storage call that did not get the status it wanted.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StorageError {
    /// 0 when no answer came (connection refused, timeout).
    pub status: u16,
    /// The XML `<Code>` (or JSON `odata.error.code`), or the I/O error.
    pub code: String,
    /// The error body as sent (XML or JSON), or empty.
    pub body: String,
}

impl std::fmt::Display for StorageError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "storage {} {}: {}", self.status, self.code, self.body)
    }
}

/// Split `https://h/p?sas` into (`https://h/p`, `sas`).
pub fn split_sas(url: &str) -> (&str, &str) {
    url.split_once('?').unwrap_or((url, ""))
}

/// Text of the first `<tag>...</tag>` in `xml`, entities decoded.
pub fn xml_text(xml: &str, tag: &str) -> Option<String> {
    let open = format!("<{tag}>");
    let close = format!("</{tag}>");
    let start = xml.find(&open)? + open.len();
    let end = start + xml[start..].find(&close)?;
    Some(xml_unescape(&xml[start..end]))
}

pub fn xml_unescape(s: &str) -> String {
    s.replace("&lt;", "<")
        .replace("&gt;", ">")
        .replace("&quot;", "\"")
        .replace("&apos;", "'")
        .replace("&amp;", "&")
}

pub fn xml_escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

fn call(
    method: &str,
    url: &str,
    headers: &[(&str, &str)],
    body: &[u8],
    ca: Option<&str>,
    want: &[u16],
) -> Result<ClientResponse, StorageError> {
    let mut h = vec![("x-ms-version", STORAGE_VERSION)];
    h.extend_from_slice(headers);
    let r = client::request(method, url, &h, body, ca, TIMEOUT).map_err(|e| StorageError {
        status: 0,
        code: e.to_string(),
        body: String::new(),
    })?;
    if want.contains(&r.status) {
        return Ok(r);
    }
    let text = r.text();
    let code = xml_text(&text, "Code")
        .or_else(|| {
            serde_json::from_str::<serde_json::Value>(&text)
                .ok()
                .and_then(|v| v["odata.error"]["code"].as_str().map(str::to_string))
        })
        .unwrap_or_default();
    Err(StorageError {
        status: r.status,
        code,
        body: text,
    })
}

/// `PUT {container}/{name}?{sas}` as a block blob (exact length); 201.
pub fn put_blob(
    container_url: &str,
    name: &str,
    body: &[u8],
    ca: Option<&str>,
) -> Result<String, StorageError> {
    let (base, sas) = split_sas(container_url);
    let url = format!("{base}/{name}?{sas}");
    call(
        "PUT",
        &url,
        &[("x-ms-blob-type", "BlockBlob")],
        body,
        ca,
        &[201],
    )?;
    Ok(url)
}

/// `PUT {blob}?comp=block&blockid=..`: one block of a blob to be committed by [`put_block_list`] (`id` is the
/// base64 block id, all of one blob the same length); 201.
pub fn put_block(
    blob_url: &str,
    id: &str,
    body: &[u8],
    ca: Option<&str>,
) -> Result<(), StorageError> {
    let (base, sas) = split_sas(blob_url);
    let url = format!(
        "{base}?comp=block&blockid={}&{sas}",
        crate::sas::query_encode(id)
    );
    call("PUT", &url, &[], body, ca, &[201]).map(|_| ())
}

/// `PUT {blob}?comp=blocklist`: commit the blocks, in this order; 201.
pub fn put_block_list(blob_url: &str, ids: &[&str], ca: Option<&str>) -> Result<(), StorageError> {
    let (base, sas) = split_sas(blob_url);
    let mut body = String::from(r#"<?xml version="1.0" encoding="utf-8"?><BlockList>"#);
    for id in ids {
        body.push_str(&format!("<Latest>{id}</Latest>"));
    }
    body.push_str("</BlockList>");
    call(
        "PUT",
        &format!("{base}?comp=blocklist&{sas}"),
        &[("Content-Type", "application/xml")],
        body.as_bytes(),
        ca,
        &[201],
    )
    .map(|_| ())
}

/// `GET {blob}?{sas}`: the blob's bytes.
pub fn get_blob(blob_url: &str, ca: Option<&str>) -> Result<Vec<u8>, StorageError> {
    call("GET", blob_url, &[], b"", ca, &[200]).map(|r| r.body)
}

/// `POST {queue}/messages?{sas}`: enqueue `text` (already base64 for Kusto); 201.
pub fn put_message(queue_url: &str, text: &str, ca: Option<&str>) -> Result<(), StorageError> {
    let (base, sas) = split_sas(queue_url);
    let body = format!(
        "<QueueMessage><MessageText>{}</MessageText></QueueMessage>",
        xml_escape(text)
    );
    call(
        "POST",
        &format!("{base}/messages?{sas}"),
        &[("Content-Type", "application/xml")],
        body.as_bytes(),
        ca,
        &[201],
    )
    .map(|_| ())
}

/// `GET {queue}/messages?numofmessages=n&visibilitytimeout=s` (dequeue), or `peekonly=true` when `visibility`
/// is `None`.
pub fn get_messages(
    queue_url: &str,
    n: u32,
    visibility: Option<Duration>,
    ca: Option<&str>,
) -> Result<Vec<QueueMessage>, StorageError> {
    let (base, sas) = split_sas(queue_url);
    let q = match visibility {
        Some(v) => format!("numofmessages={n}&visibilitytimeout={}", v.as_secs().max(1)),
        None => format!("peekonly=true&numofmessages={n}"),
    };
    let r = call(
        "GET",
        &format!("{base}/messages?{q}&{sas}"),
        &[],
        b"",
        ca,
        &[200],
    )?;
    let text = r.text();
    let mut out = Vec::new();
    let mut rest = text.as_str();
    while let Some(i) = rest.find("<QueueMessage>") {
        let end = rest[i..]
            .find("</QueueMessage>")
            .map_or(rest.len(), |e| i + e);
        let m = &rest[i..end];
        out.push(QueueMessage {
            id: xml_text(m, "MessageId").unwrap_or_default(),
            pop_receipt: xml_text(m, "PopReceipt").unwrap_or_default(),
            text: xml_text(m, "MessageText").unwrap_or_default(),
            dequeue_count: xml_text(m, "DequeueCount")
                .and_then(|d| d.parse().ok())
                .unwrap_or(0),
        });
        rest = &rest[end..];
    }
    Ok(out)
}

/// `DELETE {queue}/messages/{id}?popreceipt=..`; 204.
pub fn delete_message(
    queue_url: &str,
    m: &QueueMessage,
    ca: Option<&str>,
) -> Result<(), StorageError> {
    let (base, sas) = split_sas(queue_url);
    let url = format!(
        "{base}/messages/{}?popreceipt={}&{sas}",
        m.id,
        crate::sas::query_encode(&m.pop_receipt)
    );
    call("DELETE", &url, &[], b"", ca, &[204]).map(|_| ())
}

const JSON_HEADERS: [(&str, &str); 3] = [
    ("Content-Type", "application/json"),
    ("Accept", "application/json;odata=nometadata"),
    ("Prefer", "return-no-content"),
];

fn entity_url(table_url: &str, pk: &str, rk: &str) -> String {
    let (base, sas) = split_sas(table_url);
    let q = |s: &str| crate::sas::query_encode(&s.replace('\'', "''"));
    format!("{base}(PartitionKey='{}',RowKey='{}')?{sas}", q(pk), q(rk))
}

/// `POST {table}?{sas}`: insert an entity (a JSON object with PartitionKey and RowKey); 204.
pub fn insert_entity(
    table_url: &str,
    entity: &serde_json::Value,
    ca: Option<&str>,
) -> Result<(), StorageError> {
    call(
        "POST",
        table_url,
        &JSON_HEADERS,
        entity.to_string().as_bytes(),
        ca,
        &[201, 204],
    )
    .map(|_| ())
}

/// `MERGE {table}(PartitionKey='..',RowKey='..')?{sas}`: insert or merge; 204.
pub fn merge_entity(
    table_url: &str,
    pk: &str,
    rk: &str,
    fields: &serde_json::Value,
    ca: Option<&str>,
) -> Result<(), StorageError> {
    call(
        "MERGE",
        &entity_url(table_url, pk, rk),
        &JSON_HEADERS,
        fields.to_string().as_bytes(),
        ca,
        &[204],
    )
    .map(|_| ())
}

/// `GET {table}(PartitionKey='..',RowKey='..')?{sas}`: the entity as JSON.
pub fn get_entity(
    table_url: &str,
    pk: &str,
    rk: &str,
    ca: Option<&str>,
) -> Result<serde_json::Value, StorageError> {
    let r = call(
        "GET",
        &entity_url(table_url, pk, rk),
        &[("Accept", "application/json;odata=nometadata")],
        b"",
        ca,
        &[200],
    )?;
    serde_json::from_slice(&r.body).map_err(|e| StorageError {
        status: 200,
        code: format!("not JSON: {e}"),
        body: String::new(),
    })
}

/// Account-level operations with an account SAS minted from the key.
pub struct Account {
    pub ep: StorageEndpoints,
}

impl Account {
    pub fn new(ep: StorageEndpoints) -> Account {
        Account { ep }
    }

    fn ca(&self) -> Option<&str> {
        self.ep.ca_pem.as_deref()
    }

    /// An account SAS (`ss=bqt&srt=sco`, every permission, valid for a day).
    pub fn account_sas(&self) -> String {
        let now = crate::auth::unix_now();
        Sas {
            resource: SasResource::Account {
                services: "bqt".into(),
                resource_types: "sco".into(),
            },
            permissions: "rwdlacup".into(),
            start: Some(now - 300),
            expiry: now + 86_400,
            protocol: String::new(),
            version: SAS_VERSION.into(),
        }
        .query(&self.ep.account, &self.ep.key)
    }

    /// `PUT {blob}/{name}?restype=container`; an existing one is fine.
    pub fn create_container(&self, name: &str) -> Result<(), StorageError> {
        let url = format!(
            "{}/{name}?restype=container&{}",
            self.ep.blob,
            self.account_sas()
        );
        call("PUT", &url, &[], b"", self.ca(), &[201, 409]).map(|_| ())
    }

    /// `PUT {queue}/{name}`; an existing one is fine.
    pub fn create_queue(&self, name: &str) -> Result<(), StorageError> {
        let url = format!("{}/{name}?{}", self.ep.queue, self.account_sas());
        call("PUT", &url, &[], b"", self.ca(), &[201, 204]).map(|_| ())
    }

    /// `POST {table}/Tables`; an existing one is fine.
    pub fn create_table(&self, name: &str) -> Result<(), StorageError> {
        let url = format!("{}/Tables?{}", self.ep.table, self.account_sas());
        let body = serde_json::json!({ "TableName": name }).to_string();
        call(
            "POST",
            &url,
            &JSON_HEADERS,
            body.as_bytes(),
            self.ca(),
            &[201, 204, 409],
        )
        .map(|_| ())
    }

    /// `{base}/{name}` of a service, with the account SAS: what the DM itself uses.
    pub fn url_with_account_sas(&self, base: &str, name: &str) -> String {
        format!("{base}/{name}?{}", self.account_sas())
    }

    /// `{blob}/{container}?{container SAS}`.
    pub fn container_url(
        &self,
        container: &str,
        permissions: &str,
        start: i64,
        expiry: i64,
    ) -> String {
        let resource = SasResource::Container(container.into());
        self.service_url(
            &self.ep.blob,
            container,
            resource,
            permissions,
            start,
            expiry,
        )
    }

    /// `{queue}/{queue name}?{queue SAS}`.
    pub fn queue_url(&self, queue: &str, permissions: &str, start: i64, expiry: i64) -> String {
        let resource = SasResource::Queue(queue.into());
        self.service_url(&self.ep.queue, queue, resource, permissions, start, expiry)
    }

    /// `{table}/{table name}?{table SAS}`.
    pub fn table_url(&self, table: &str, permissions: &str, start: i64, expiry: i64) -> String {
        let resource = SasResource::Table(table.into());
        self.service_url(&self.ep.table, table, resource, permissions, start, expiry)
    }

    /// `{base}/{name}?{service SAS for resource}`: the URL shape the DM hands out for each service.
    fn service_url(
        &self,
        base: &str,
        name: &str,
        resource: SasResource,
        permissions: &str,
        start: i64,
        expiry: i64,
    ) -> String {
        let sas = Sas {
            resource,
            permissions: permissions.into(),
            start: Some(start),
            expiry,
            protocol: String::new(),
            version: SAS_VERSION.into(),
        };
        format!(
            "{base}/{name}?{}",
            sas.query(&self.ep.account, &self.ep.key)
        )
    }
}
