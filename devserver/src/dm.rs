//! The data-management ("ingest-") side of the test endpoint, over a real Azure Storage server (Azurite).
//!
//! - `POST /v1/rest/mgmt` answers `.get ingestion resources` (a v1 data set of SAS URLs into Azurite that it
//!   mints with the account key: one row per ingestion queue and per container, and the failure and success
//!   queues and the status table) and `.get kusto identity token` (one opaque `AuthorizationContext`), with the
//!   same header and bearer checks as streaming, and counts every command ([`DmStats`]).
//! - An ingestor thread takes messages off the ingestion queues (dequeue, then delete), checks them as the
//!   service would, downloads the blob with the SAS in `BlobPath`, ingests its records into the same store as
//!   streaming, and reports through the failure / success queues and the status table as the message asks.
//! - Deviations from the protocol (`kusto-queued.md`) are **violations** ([`crate::Server::dm_violations`]):
//!   not base64, not JSON, a missing or mistyped field, `Id` not a lowercase uuid, a wrong
//!   `authorizationContext`, `BlobPath` outside the DM's containers or with a SAS it did not sign, `RawDataSize`
//!   not the uncompressed size, a `.gz` name on data that is not gzip or the reverse, a blob name outside
//!   `[A-Za-z0-9._-]`. Data problems (missing table or mapping, unknown format, bad records, empty or missing
//!   blob) are failure notifications, as the service sends them.
//! - The same blob (path without SAS) or message `Id` again within `batch_window` of its first ingestion is
//!   not ingested again: a `BlobAlreadyReceived_BlobAlreadyFoundInBatch` failure instead (the status row, if
//!   any, keeps the first copy's outcome). Later, it is ingested again and counted as a duplicate.
//! - Misbehaviour on demand: [`DmFaults`].

use std::collections::HashMap;
use std::net::TcpListener;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::azurite::StorageEndpoints;
use crate::http::{Request, Response};
use crate::ingest::{self, ApiError};
use crate::sas::{self, SasCheck, SasResource};
use crate::server::{error_response, timestamp_now, Reply, Shared};
use crate::storage::{self, Account, QueueMessage};

/// How the DM behaves.
#[derive(Clone, Debug)]
pub struct DmConfig {
    /// The storage account (Azurite) it hands out and reads.
    pub storage: StorageEndpoints,
    /// Ingestion queues (`SecuredReadyForAggregationQueue` rows).
    pub ingestion_queues: usize,
    /// Blob containers (`TempStorage` rows).
    pub containers: usize,
    /// How long the SAS it hands out stay valid (the service: about 12 h).
    pub sas_lifetime: Duration,
    /// How often the ingestor looks at the queues.
    pub poll_interval: Duration,
    /// A blob or `Id` seen again within this long of its first ingestion is refused as already in the batch.
    pub batch_window: Duration,
    /// The `AuthorizationContext` handed out; `None`: a random one.
    pub identity_token: Option<String>,
    /// The storage server's process, for `POST /_dev/dm/storage-pause` / `-resume` (the binary's
    /// `--azurite` sets it). `None`: those endpoints answer 404.
    pub storage_pid: Option<u32>,
}

impl DmConfig {
    pub fn new(storage: StorageEndpoints) -> DmConfig {
        DmConfig {
            storage,
            ingestion_queues: 2,
            containers: 2,
            sas_lifetime: Duration::from_secs(12 * 3600),
            poll_interval: Duration::from_millis(100),
            batch_window: Duration::from_secs(5),
            identity_token: None,
            storage_pid: None,
        }
    }
}

/// Misbehaviour on demand (all off by default). Set with [`crate::Server::set_dm_faults`].
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DmFaults {
    /// Answer this many next management commands with 429 (`General_ThrottledIngestion`, `@permanent: false`).
    pub throttle_mgmt: usize,
    /// Hand out URLs to a loopback port where nothing listens (storage unreachable for new resources).
    pub storage_unreachable: bool,
    /// Hand out SAS whose `se` is an hour in the past (Azurite answers 403).
    pub sas_expired: bool,
    /// Post every notification (and status row update) this long after the ingestion.
    pub notification_delay: Duration,
    /// Process every message this long after taking it off the queue (batching latency).
    pub ingest_delay: Duration,
    /// Stop taking messages off the queues (they wait there).
    pub ingestor_paused: bool,
    /// Fail this many next ingestions as the service does when its own retries ran out
    /// (`General_RetryAttemptsExceeded`, `FailureStatus` `Exhausted`): the data is not ingested, a resend may be.
    pub exhaust_ingestions: usize,
}

/// Counters of the DM side.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DmStats {
    /// `.get ingestion resources` answered with resources.
    pub resources_requests: usize,
    /// `.get kusto identity token` answered with a token.
    pub identity_token_requests: usize,
    /// Management commands answered 429 by [`DmFaults::throttle_mgmt`].
    pub mgmt_throttled: usize,
    /// Management commands refused (auth, headers, body, unknown command).
    pub mgmt_refused: usize,
    /// Messages taken off the ingestion queues.
    pub messages_taken: usize,
    /// Blobs whose records were stored.
    pub blobs_ingested: usize,
    /// Records stored from blobs.
    pub records_ingested: usize,
    /// Messages whose blob or `Id` was already ingested within the batch window: refused.
    pub duplicates_in_batch: usize,
    /// Blobs or `Id`s ingested again after the batch window (their records are duplicated).
    pub duplicates_ingested: usize,
    /// Ingestions that failed (a failure outcome, whether or not a notification was asked for).
    pub failed_ingestions: usize,
    pub failure_notifications: usize,
    pub success_notifications: usize,
    pub status_rows_updated: usize,
    /// Calls of the DM itself to storage that failed (Azurite paused or down).
    pub storage_errors: usize,
    pub violations: usize,
}

impl DmStats {
    pub fn to_json(&self) -> String {
        json!({
            "resources_requests": self.resources_requests,
            "identity_token_requests": self.identity_token_requests,
            "mgmt_throttled": self.mgmt_throttled,
            "mgmt_refused": self.mgmt_refused,
            "messages_taken": self.messages_taken,
            "blobs_ingested": self.blobs_ingested,
            "records_ingested": self.records_ingested,
            "duplicates_in_batch": self.duplicates_in_batch,
            "duplicates_ingested": self.duplicates_ingested,
            "failed_ingestions": self.failed_ingestions,
            "failure_notifications": self.failure_notifications,
            "success_notifications": self.success_notifications,
            "status_rows_updated": self.status_rows_updated,
            "storage_errors": self.storage_errors,
            "violations": self.violations,
        })
        .to_string()
    }
}

/// One message the ingestor processed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct QueuedIngestion {
    /// The message `Id` (empty if it had none).
    pub id: String,
    pub database: String,
    pub table: String,
    pub format: String,
    /// `BlobPath` without its SAS.
    pub blob: String,
    pub raw_size_declared: u64,
    /// Uncompressed size of the blob as downloaded (0 if it could not be read).
    pub raw_size_actual: u64,
    pub records: usize,
    /// `Succeeded`, or the failure's error code.
    pub outcome: String,
    /// The message as decoded (JSON), every SAS signature replaced by `REDACTED`: what the client sent, for
    /// comparing clients field by field.
    pub message: String,
}

/// Most violations remembered (the count goes on).
pub const MAX_VIOLATIONS: usize = 1000;

/// The queue, container and table names of one DM (random suffix: several DMs can share one Azurite).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DmResourceNames {
    /// `SecuredReadyForAggregationQueue`s.
    pub ingestion: Vec<String>,
    /// `FailedIngestionsQueue`.
    pub failed: String,
    /// `SuccessfulIngestionsQueue`.
    pub succeeded: String,
    /// `TempStorage` containers.
    pub containers: Vec<String>,
    /// `IngestionsStatusTable`.
    pub table: String,
}

struct Work {
    due: Instant,
    text: String,
    queue_msg_id: String,
    attempts: u32,
}

struct Notice {
    due: Instant,
    /// Queue URL (with the DM's SAS) and the base64 text, or a status row to merge.
    kind: NoticeKind,
}

enum NoticeKind {
    Queue {
        url: String,
        text: String,
        success: bool,
    },
    Row {
        url: String,
        pk: String,
        rk: String,
        fields: Value,
    },
}

#[derive(Default)]
struct Inner {
    stats: DmStats,
    violations: Vec<String>,
    faults: DmFaults,
    /// First ingestion of each blob (path without SAS) and each message `Id`.
    seen_blobs: HashMap<String, Instant>,
    seen_ids: HashMap<String, Instant>,
    ingestions: Vec<QueuedIngestion>,
    work: Vec<Work>,
    notices: Vec<Notice>,
}

pub(crate) struct Dm {
    cfg: DmConfig,
    account: Account,
    pub(crate) names: DmResourceNames,
    token: String,
    /// Base URLs with the port of a closed loopback socket, for `storage_unreachable`.
    dead: StorageEndpoints,
    inner: Mutex<Inner>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Replace the port of `http(s)://host:PORT/...` with `port`.
fn with_port(base: &str, port: u16) -> String {
    let Some(scheme_end) = base.find("://") else {
        return base.to_string();
    };
    let rest = &base[scheme_end + 3..];
    let auth_end = rest.find('/').unwrap_or(rest.len());
    let host = match rest[..auth_end].rsplit_once(':') {
        Some((h, _)) => h,
        None => &rest[..auth_end],
    };
    format!(
        "{}{host}:{port}{}",
        &base[..scheme_end + 3],
        &rest[auth_end..]
    )
}

fn is_lower_uuid(s: &str) -> bool {
    uuid::Uuid::try_parse(s).is_ok_and(|u| u.hyphenated().to_string() == s)
}

impl Dm {
    /// Create the queues, containers and table in storage.
    pub(crate) fn setup(cfg: DmConfig, random: &[u8]) -> Result<Dm, String> {
        let hex: String = random.iter().take(5).map(|b| format!("{b:02x}")).collect();
        let date = &crate::server::utc_seconds(crate::auth::unix_now())[..10].replace('-', "");
        let names = DmResourceNames {
            ingestion: (0..cfg.ingestion_queues.max(1))
                .map(|i| format!("readyforaggregation-secured-{hex}-{i}"))
                .collect(),
            failed: format!("failedingestions-{hex}"),
            succeeded: format!("successfulingestions-{hex}"),
            containers: (0..cfg.containers.max(1))
                .map(|i| format!("{date}-ingestdata-{hex}-{i}"))
                .collect(),
            table: format!("ingestionsstatus{hex}"),
        };
        let account = Account::new(cfg.storage.clone());
        let err = |what: &str, e: storage::StorageError| format!("DM setup: {what}: {e}");
        for q in names
            .ingestion
            .iter()
            .chain([&names.failed, &names.succeeded])
        {
            account.create_queue(q).map_err(|e| err(q, e))?;
        }
        for c in &names.containers {
            account.create_container(c).map_err(|e| err(c, e))?;
        }
        account
            .create_table(&names.table)
            .map_err(|e| err(&names.table, e))?;
        let dead_port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .map_err(|e| format!("DM setup: {e}"))?;
        let st = &cfg.storage;
        let dead = StorageEndpoints {
            blob: with_port(&st.blob, dead_port),
            queue: with_port(&st.queue, dead_port),
            table: with_port(&st.table, dead_port),
            ..st.clone()
        };
        let token = cfg.identity_token.clone().unwrap_or_else(|| {
            format!(
                "kdev-identity;{}",
                crate::b64::encode(&random[random.len().saturating_sub(24)..])
            )
        });
        Ok(Dm {
            cfg,
            account,
            names,
            token,
            dead,
            inner: Mutex::new(Inner::default()),
        })
    }

    fn inner(&self) -> MutexGuard<'_, Inner> {
        lock(&self.inner)
    }

    fn ca(&self) -> Option<&str> {
        self.cfg.storage.ca_pem.as_deref()
    }

    pub(crate) fn storage_pid(&self) -> Option<u32> {
        self.cfg.storage_pid
    }

    pub(crate) fn identity_token(&self) -> &str {
        &self.token
    }

    pub(crate) fn stats(&self) -> DmStats {
        self.inner().stats.clone()
    }

    pub(crate) fn violations(&self) -> Vec<String> {
        self.inner().violations.clone()
    }

    pub(crate) fn ingestions(&self) -> Vec<QueuedIngestion> {
        self.inner().ingestions.clone()
    }

    pub(crate) fn faults(&self) -> DmFaults {
        self.inner().faults.clone()
    }

    pub(crate) fn set_faults(&self, f: DmFaults) {
        self.inner().faults = f;
    }

    pub(crate) fn reset(&self) {
        *self.inner() = Inner::default();
    }

    fn violation(&self, v: String) {
        let mut i = self.inner();
        i.stats.violations += 1;
        if i.violations.len() < MAX_VIOLATIONS {
            i.violations.push(v);
        }
    }

    /// The URL of a queue with the DM's own (account) SAS.
    fn own_queue(&self, name: &str) -> String {
        self.account
            .url_with_account_sas(&self.cfg.storage.queue, name)
    }

    fn own_table(&self) -> String {
        self.account
            .url_with_account_sas(&self.cfg.storage.table, &self.names.table)
    }

    /// The rows of `.get ingestion resources`.
    fn resources(&self) -> Vec<(&'static str, String)> {
        let f = self.faults();
        let now = crate::auth::unix_now();
        let (start, expiry) = if f.sas_expired {
            (now - 2 * 3600, now - 3600)
        } else {
            (now - 300, now + self.cfg.sas_lifetime.as_secs() as i64)
        };
        let ep = if f.storage_unreachable {
            &self.dead
        } else {
            &self.cfg.storage
        };
        let acct = Account::new(ep.clone());
        let mut rows = Vec::new();
        for q in &self.names.ingestion {
            rows.push((
                "SecuredReadyForAggregationQueue",
                acct.queue_url(q, "a", start, expiry),
            ));
        }
        rows.push((
            "FailedIngestionsQueue",
            acct.queue_url(&self.names.failed, "rp", start, expiry),
        ));
        rows.push((
            "SuccessfulIngestionsQueue",
            acct.queue_url(&self.names.succeeded, "rp", start, expiry),
        ));
        for c in &self.names.containers {
            rows.push(("TempStorage", acct.container_url(c, "rw", start, expiry)));
        }
        rows.push((
            "IngestionsStatusTable",
            acct.table_url(&self.names.table, "raud", start, expiry),
        ));
        rows
    }
}

/// Parse the body of `POST /_dev/dm/faults`: one setting per line (or comma), all others off:
/// `throttle-mgmt=N`, `storage-unreachable`, `sas-expired`, `notification-delay-ms=N`, `ingest-delay-ms=N`,
/// `ingestor-paused`, `exhaust-ingestions=N`. An empty body turns everything off.
pub fn parse_faults(text: &str) -> Result<DmFaults, String> {
    let mut f = DmFaults::default();
    for item in text
        .split(['\n', ','])
        .map(str::trim)
        .filter(|s| !s.is_empty())
    {
        let (k, v) = match item.split_once('=') {
            Some((k, v)) => (k.trim(), Some(v.trim())),
            None => (item, None),
        };
        let num = || -> Result<u64, String> {
            v.and_then(|v| v.parse().ok())
                .ok_or_else(|| format!("{k} needs =N, got {item:?}"))
        };
        let flag = || match v {
            None => Ok(true),
            Some(v) => Err(format!("{k} takes no value, got {v:?}")),
        };
        match k {
            "throttle-mgmt" => f.throttle_mgmt = num()? as usize,
            "storage-unreachable" => f.storage_unreachable = flag()?,
            "sas-expired" => f.sas_expired = flag()?,
            "notification-delay-ms" => f.notification_delay = Duration::from_millis(num()?),
            "ingest-delay-ms" => f.ingest_delay = Duration::from_millis(num()?),
            "ingestor-paused" => f.ingestor_paused = flag()?,
            "exhaust-ingestions" => f.exhaust_ingestions = num()? as usize,
            _ => return Err(format!("unknown DM fault {item:?}")),
        }
    }
    Ok(f)
}

fn v1_table(columns: &[(&str, &str)], rows: Vec<Value>) -> String {
    let cols: Vec<Value> = columns
        .iter()
        .map(|(n, t)| json!({"ColumnName": n, "DataType": t}))
        .collect();
    json!({"Tables": [{"TableName": "Table_0", "Columns": cols, "Rows": rows}]}).to_string()
}

fn mgmt_error(status: u16, code: &str, detail: impl Into<String>, permanent: bool) -> ApiError {
    ApiError::new(
        status,
        code,
        "Kusto.Data.Exceptions.KustoBadRequestException",
        detail,
        permanent,
    )
}

/// `POST /v1/rest/mgmt`.
pub(crate) fn handle_mgmt(shared: &Shared, req: &Request, activity: &str) -> Reply {
    let crid = req
        .header("x-ms-client-request-id")
        .unwrap_or("")
        .to_string();
    let send = |e: ApiError| {
        let r = error_response(&e, &crid, activity);
        Reply::Send(if e.status == 401 {
            r.header("WWW-Authenticate", "Bearer")
        } else {
            r
        })
    };
    if req.method != "POST" {
        return send(ApiError::new(
            405,
            "MethodNotAllowed",
            "Kusto.Common.Svc.Exceptions.MethodNotAllowedException",
            "Management commands are POST /v1/rest/mgmt.",
            true,
        ));
    }
    let Some(dm) = shared.dm.as_ref() else {
        // The engine: management commands of the DM belong on the ingest- endpoint.
        return send(ApiError::new(
            400,
            "BadRequest",
            "Kusto.Common.Svc.Exceptions.AdminCommandWrongEndpointException",
            "AdminCommandWrongEndpointException: Cannot get ingestion resources from this service endpoint. \
             The appropriate endpoint is the data management service of the cluster (its host starts with \
             'ingest-'); this devserver serves it only when started with a DM (--azurite).",
            false,
        ));
    };
    let refuse = |e: ApiError| {
        dm.inner().stats.mgmt_refused += 1;
        send(e)
    };
    if let Err(e) = shared.auth.check_ingest(req, shared.cfg.token.as_deref()) {
        return refuse(e);
    }
    if let Err(e) = ingest::check_headers(req) {
        return refuse(e);
    }
    {
        let mut i = dm.inner();
        if i.faults.throttle_mgmt > 0 {
            i.faults.throttle_mgmt -= 1;
            i.stats.mgmt_throttled += 1;
            return send(ingest::throttled());
        }
    }
    let ct = req
        .header("content-type")
        .unwrap_or("")
        .to_ascii_lowercase();
    if !ct.starts_with("application/json") {
        dm.violation(format!(
            "mgmt {crid}: Content-Type {ct:?} is not application/json"
        ));
    }
    let body: Value = match serde_json::from_slice(&req.body) {
        Ok(v @ Value::Object(_)) => v,
        _ => {
            dm.violation(format!("mgmt {crid}: body is not a JSON object"));
            return refuse(mgmt_error(
                400,
                "BadRequest_SyntaxError",
                "The request body must be a JSON object {\"db\":..,\"csl\":..}.",
                true,
            ));
        }
    };
    if body["db"].as_str().is_none() {
        dm.violation(format!("mgmt {crid}: body has no \"db\""));
    }
    let csl = body["csl"].as_str().unwrap_or("");
    let norm: String = csl.split_whitespace().collect::<Vec<_>>().join(" ");
    let resp = match norm.to_ascii_lowercase().as_str() {
        ".get ingestion resources" => {
            dm.inner().stats.resources_requests += 1;
            let rows = dm
                .resources()
                .into_iter()
                .map(|(k, v)| json!([k, v]))
                .collect();
            v1_table(
                &[("ResourceTypeName", "String"), ("StorageRoot", "String")],
                rows,
            )
        }
        ".get kusto identity token" => {
            dm.inner().stats.identity_token_requests += 1;
            v1_table(
                &[("AuthorizationContext", "String")],
                vec![json!([dm.identity_token()])],
            )
        }
        _ => {
            return refuse(mgmt_error(
                400,
                "BadRequest_SyntaxError",
                format!("This server knows only '.get ingestion resources' and '.get kusto identity token', not {csl:?}."),
                true,
            ))
        }
    };
    Reply::Send(Response::json(200, resp).header("x-ms-activity-id", activity.to_string()))
}

/// The ingestor: runs until the server stops.
pub(crate) fn run_ingestor(shared: Arc<Shared>) {
    let Some(dm) = shared.dm.as_ref() else {
        return;
    };
    let own_queues: Vec<String> = dm.names.ingestion.iter().map(|q| dm.own_queue(q)).collect();
    while !shared.stopping.load(Ordering::SeqCst) {
        let faults = dm.faults();
        let mut taken = 0;
        if !faults.ingestor_paused {
            for q in &own_queues {
                taken += take_messages(dm, q, faults.ingest_delay);
            }
        }
        process_due(&shared, dm);
        post_due(dm);
        if taken == 0 {
            shared.sleep_unless_stopping(dm.cfg.poll_interval);
        }
    }
}

/// Dequeue (and delete) up to 32 messages; returns how many were taken.
fn take_messages(dm: &Dm, queue: &str, delay: Duration) -> usize {
    let msgs = match storage::get_messages(queue, 32, Some(Duration::from_secs(60)), dm.ca()) {
        Ok(m) => m,
        Err(_) => {
            dm.inner().stats.storage_errors += 1;
            return 0;
        }
    };
    let n = msgs.len();
    for m in msgs {
        if storage::delete_message(queue, &m, dm.ca()).is_err() {
            // Someone else took it, or storage is gone: it comes back when its visibility ends.
            dm.inner().stats.storage_errors += 1;
            continue;
        }
        let QueueMessage { id, text, .. } = m;
        let mut i = dm.inner();
        i.stats.messages_taken += 1;
        i.work.push(Work {
            due: Instant::now() + delay,
            text,
            queue_msg_id: id,
            attempts: 0,
        });
    }
    n
}

fn process_due(shared: &Shared, dm: &Dm) {
    let now = Instant::now();
    let due: Vec<Work> = {
        let mut i = dm.inner();
        let (due, later): (Vec<_>, Vec<_>) = std::mem::take(&mut i.work)
            .into_iter()
            .partition(|w| w.due <= now);
        i.work = later;
        due
    };
    for w in due {
        if let Some(retry) = process(shared, dm, w) {
            dm.inner().work.push(retry);
        }
    }
}

fn post_due(dm: &Dm) {
    let now = Instant::now();
    let due: Vec<Notice> = {
        let mut i = dm.inner();
        let (due, later): (Vec<_>, Vec<_>) = std::mem::take(&mut i.notices)
            .into_iter()
            .partition(|n| n.due <= now);
        i.notices = later;
        due
    };
    for n in due {
        let r = match &n.kind {
            NoticeKind::Queue { url, text, .. } => storage::put_message(url, text, dm.ca()),
            NoticeKind::Row {
                url,
                pk,
                rk,
                fields,
            } => storage::merge_entity(url, pk, rk, fields, dm.ca()),
        };
        let mut i = dm.inner();
        match r {
            Ok(()) => match &n.kind {
                NoticeKind::Queue { success: true, .. } => i.stats.success_notifications += 1,
                NoticeKind::Queue { .. } => i.stats.failure_notifications += 1,
                NoticeKind::Row { .. } => i.stats.status_rows_updated += 1,
            },
            Err(_) => {
                i.stats.storage_errors += 1;
                // Try again at the next round.
                i.notices.push(Notice {
                    due: now + Duration::from_millis(500),
                    kind: n.kind,
                });
            }
        }
    }
}

/// What a message asked for, as far as it could be read.
struct Msg {
    id: String,
    blob_path: String,
    raw_size: u64,
    db: String,
    table: String,
    format: String,
    mapping: Option<String>,
    report_level: u64,
    report_method: u64,
    /// (table URL with SAS, PartitionKey, RowKey).
    status_row: Option<(String, String, String)>,
    /// The decoded JSON, signatures redacted.
    json: String,
}

/// `sig=...` values replaced by `REDACTED`, up to the next `&`, `"` or end.
fn redact_sig(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(i) = rest.find("sig=") {
        out.push_str(&rest[..i + 4]);
        out.push_str("REDACTED");
        rest = &rest[i + 4..];
        let end = rest.find(['&', '"']).unwrap_or(rest.len());
        rest = &rest[end..];
    }
    out.push_str(rest);
    out
}

/// A failed ingestion: error code, details, failure status.
struct Failure {
    code: &'static str,
    details: String,
    status: &'static str,
}

fn permanent(code: &'static str, details: impl Into<String>) -> Failure {
    Failure {
        code,
        details: details.into(),
        status: "Permanent",
    }
}

/// Read and check the message; violations are recorded. `None` when it cannot be acted on at all.
fn parse(dm: &Dm, w: &Work) -> Option<Msg> {
    let tag = format!("message {}", w.queue_msg_id);
    let v = |s: String| dm.violation(format!("{tag}: {s}"));
    if w.text.len() > 65_536 {
        v(format!(
            "MessageText is {} characters (> 65536)",
            w.text.len()
        ));
    }
    let Some(raw) = crate::b64::decode(w.text.trim()) else {
        v("MessageText is not standard base64".into());
        return None;
    };
    let Ok(j @ Value::Object(_)) = serde_json::from_slice::<Value>(&raw) else {
        v("MessageText is not base64 of a JSON object".into());
        return None;
    };
    let s = |k: &str| j[k].as_str().map(str::to_string);
    let id = s("Id").unwrap_or_default();
    if !is_lower_uuid(&id) {
        v(format!("Id {id:?} is not a lowercase uuid"));
    }
    let tag = format!("message {id}");
    let v = |s: String| dm.violation(format!("{tag}: {s}"));
    let Some(blob_path) = s("BlobPath").filter(|b| !b.is_empty()) else {
        v("BlobPath missing".into());
        return None;
    };
    let raw_size = match j["RawDataSize"].as_u64() {
        Some(n) => n,
        None => {
            v(format!("RawDataSize {} is not a number", j["RawDataSize"]));
            0
        }
    };
    let (Some(db), Some(table)) = (
        s("DatabaseName").filter(|x| !x.is_empty()),
        s("TableName").filter(|x| !x.is_empty()),
    ) else {
        v("DatabaseName or TableName missing".into());
        return None;
    };
    for k in ["RetainBlobOnSuccess", "FlushImmediately", "IgnoreSizeLimit"] {
        if !j[k].is_null() && !j[k].is_boolean() {
            v(format!("{k} is not a boolean"));
        }
    }
    let int_field = |k: &str| match &j[k] {
        Value::Null => 0,
        x => match x.as_u64() {
            Some(n) if n <= 2 => n,
            _ => {
                v(format!("{k} {x} is not 0, 1 or 2"));
                0
            }
        },
    };
    let report_level = int_field("ReportLevel");
    let report_method = int_field("ReportMethod");
    if !j["SourceMessageCreationTime"].is_null() && !j["SourceMessageCreationTime"].is_string() {
        v("SourceMessageCreationTime is not a string".into());
    }
    let props = &j["AdditionalProperties"];
    if !props.is_object() {
        v("AdditionalProperties missing".into());
    }
    match props["authorizationContext"].as_str() {
        Some(t) if t == dm.identity_token() => {}
        Some(_) => {
            v("authorizationContext is not the identity token this DM handed out".into());
            return None;
        }
        None => {
            v("AdditionalProperties.authorizationContext missing".into());
            return None;
        }
    }
    for k in [
        "tags",
        "ingestionMapping",
        "validationPolicy",
        "additionalTags",
    ] {
        match &props[k] {
            Value::Null => {}
            Value::String(text) => {
                if serde_json::from_str::<Value>(text).is_err() {
                    v(format!("AdditionalProperties.{k} is a string but not JSON"));
                }
            }
            _ => v(format!("AdditionalProperties.{k} must be a JSON string")),
        }
    }
    let format = match props["format"].as_str() {
        Some(f) => f.to_string(),
        None => {
            v("AdditionalProperties.format missing".into());
            "csv".into()
        }
    };
    let mapping = props["ingestionMappingReference"]
        .as_str()
        .filter(|m| !m.is_empty())
        .map(str::to_string);
    let mut status_row = None;
    if report_method == 1 || report_method == 2 {
        let t = &j["IngestionStatusInTable"];
        match (
            t["TableConnectionString"].as_str(),
            t["PartitionKey"].as_str(),
            t["RowKey"].as_str(),
        ) {
            (Some(u), Some(p), Some(r)) => {
                status_row = Some((u.to_string(), p.to_string(), r.to_string()))
            }
            _ => v("ReportMethod is table but IngestionStatusInTable is incomplete".into()),
        }
    }
    Some(Msg {
        id,
        blob_path,
        raw_size,
        db,
        table,
        format,
        mapping,
        report_level,
        report_method,
        status_row,
        json: redact_sig(&j.to_string()),
    })
}

/// Check where `BlobPath` points and its SAS; returns the container name if it is ours.
fn check_blob_path(dm: &Dm, m: &Msg) {
    let v = |s: String| dm.violation(format!("message {}: {s}", m.id));
    let (base, query) = storage::split_sas(&m.blob_path);
    let found = [&dm.cfg.storage.blob, &dm.dead.blob].iter().find_map(|b| {
        dm.names.containers.iter().find_map(|c| {
            base.strip_prefix(&format!("{b}/{c}/"))
                .map(|name| (c.clone(), name.to_string()))
        })
    });
    let Some((container, name)) = found else {
        v(format!(
            "BlobPath {base} is not in a container this DM handed out"
        ));
        return;
    };
    if name.is_empty()
        || !name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
    {
        v(format!("blob name {name:?} is not [A-Za-z0-9._-]+"));
    }
    let now = crate::auth::unix_now();
    match sas::check(
        query,
        SasResource::Container(container),
        &dm.cfg.storage.account,
        &dm.cfg.storage.key,
        now,
    ) {
        SasCheck::Valid | SasCheck::Expired => {}
        SasCheck::BadSignature => v("BlobPath carries a SAS this DM did not sign".into()),
        SasCheck::Malformed(why) => v(format!("BlobPath SAS is malformed: {why}")),
    }
}

/// Process one message. `Some(work)` to try again later (storage unreachable).
fn process(shared: &Shared, dm: &Dm, w: Work) -> Option<Work> {
    let m = parse(dm, &w)?;
    check_blob_path(dm, &m);
    if let (Some((_, pk, rk)), 0) = (&m.status_row, w.attempts) {
        // The client inserts the row (Pending) before it posts the message; the DM only updates it.
        if let Err(e) = storage::get_entity(&dm.own_table(), pk, rk, dm.ca()) {
            if e.status == 404 {
                dm.violation(format!(
                    "message {}: IngestionStatusInTable names row ({pk}, {rk}), which was not inserted before the message was posted",
                    m.id
                ));
            }
        }
    }
    let blob = storage::split_sas(&m.blob_path).0.to_string();
    let mut log = QueuedIngestion {
        id: m.id.clone(),
        database: m.db.clone(),
        table: m.table.clone(),
        format: m.format.clone(),
        blob: blob.clone(),
        raw_size_declared: m.raw_size,
        raw_size_actual: 0,
        records: 0,
        outcome: String::new(),
        message: m.json.clone(),
    };
    // Already in this batch?
    let window = dm.cfg.batch_window;
    let now = Instant::now();
    let (in_batch, again) = {
        let i = dm.inner();
        let b = i.seen_blobs.get(&blob).copied();
        let d = i.seen_ids.get(&m.id).copied();
        let recent = |t: Option<Instant>| t.is_some_and(|t| now.duration_since(t) < window);
        (recent(b) || recent(d), b.is_some() || d.is_some())
    };
    if in_batch {
        dm.inner().stats.duplicates_in_batch += 1;
        let f = permanent(
            "BlobAlreadyReceived_BlobAlreadyFoundInBatch",
            format!("Blob '{blob}' was already received in this batch."),
        );
        finish(dm, &m, &mut log, Err(f), false);
        return None;
    }
    let exhausted = {
        let mut i = dm.inner();
        let n = i.faults.exhaust_ingestions;
        i.faults.exhaust_ingestions = n.saturating_sub(1);
        n > 0
    };
    if exhausted {
        let f = Failure {
            code: "General_RetryAttemptsExceeded",
            details: format!(
                "Ingesting blob '{blob}' failed: retry attempts exceeded (an injected fault)."
            ),
            status: "Exhausted",
        };
        finish(dm, &m, &mut log, Err(f), true);
        return None;
    }
    let outcome = ingest_blob(shared, dm, &m, &mut log);
    if let Err(f) = &outcome {
        if f.status == "Transient" && w.attempts < 3 {
            return Some(Work {
                due: Instant::now() + Duration::from_millis(500),
                attempts: w.attempts + 1,
                ..w
            });
        }
    }
    let outcome = outcome.map_err(|f| {
        if f.status == "Transient" {
            Failure {
                code: "General_RetryAttemptsExceeded",
                details: f.details,
                status: "Exhausted",
            }
        } else {
            f
        }
    });
    if outcome.is_ok() {
        let mut i = dm.inner();
        i.seen_blobs.entry(blob).or_insert(now);
        i.seen_ids.entry(m.id.clone()).or_insert(now);
        if again {
            i.stats.duplicates_ingested += 1;
        }
    }
    finish(dm, &m, &mut log, outcome, true);
    None
}

/// Download, check and store. Fills in sizes and records of `log`.
fn ingest_blob(
    shared: &Shared,
    dm: &Dm,
    m: &Msg,
    log: &mut QueuedIngestion,
) -> Result<usize, Failure> {
    let v = |s: String| dm.violation(format!("message {}: {s}", m.id));
    // What the service checks before it reads the data.
    let Some((_, framing)) = ingest::format_framing(&m.format) else {
        return Err(permanent(
            "BadRequest_FormatNotSupported",
            format!("Format '{}' is not supported.", m.format),
        ));
    };
    if let Some(tables) = &shared.cfg.tables {
        if !tables.iter().any(|(d, _)| *d == m.db) {
            return Err(permanent(
                "BadRequest_DatabaseNotExist",
                format!("Database '{}' does not exist.", m.db),
            ));
        }
        if !tables.iter().any(|(d, t)| *d == m.db && *t == m.table) {
            return Err(permanent(
                "BadRequest_TableNotExist",
                format!("Table '{}' does not exist in database '{}'.", m.table, m.db),
            ));
        }
    }
    if let (Some(allowed), Some(map)) = (&shared.cfg.mappings, &m.mapping) {
        if !allowed.iter().any(|a| a == map) {
            return Err(permanent(
                "BadRequest_MappingReferenceWasNotFound",
                format!(
                    "Mapping reference '{map}' of table '{}' was not found.",
                    m.table
                ),
            ));
        }
    }
    let data = match storage::get_blob(&m.blob_path, dm.ca()) {
        Ok(d) => d,
        Err(e) if e.status == 404 => {
            return Err(permanent(
                "Download_SourceNotFound",
                format!("Blob '{}' was not found ({}).", log.blob, e.code),
            ))
        }
        Err(e) if e.status == 403 => {
            return Err(permanent(
                "Download_Forbidden",
                format!("Access to blob '{}' was refused ({}).", log.blob, e.code),
            ))
        }
        Err(e) => {
            dm.inner().stats.storage_errors += 1;
            return Err(Failure {
                code: "Download_UnknownError",
                details: format!("Downloading blob '{}' failed: {e}", log.blob),
                status: "Transient",
            });
        }
    };
    let named_gz = log.blob.ends_with(".gz");
    let is_gz = data.starts_with(&[0x1f, 0x8b]);
    if named_gz != is_gz {
        v(if named_gz {
            "blob name ends in .gz but the data is not gzip".into()
        } else {
            "blob data is gzip but the name does not end in .gz".into()
        });
    }
    let raw = if is_gz {
        match crate::gzip::gunzip(&data, usize::MAX / 2) {
            Ok(r) => r,
            Err(e) => {
                v(format!("gzip data is corrupt: {e:?}"));
                return Err(permanent(
                    "BadRequest_InvalidArchive",
                    format!("Archive is invalid: {e:?}"),
                ));
            }
        }
    } else {
        data
    };
    log.raw_size_actual = raw.len() as u64;
    if raw.len() as u64 != m.raw_size {
        v(format!(
            "RawDataSize {} is not the uncompressed size {}",
            m.raw_size,
            raw.len()
        ));
    }
    if raw.is_empty() {
        return Err(permanent("BadRequest_EmptyBlob", "Blob is empty."));
    }
    let records = ingest::split_records(framing, &raw).map_err(|e| Failure {
        code: "BadRequest_NoRecordsOrWrongFormat",
        details: e.detail,
        status: "Permanent",
    })?;
    let n = records.len();
    log.records = n;
    shared.store_records(&m.db, &m.table, records, true);
    let mut i = dm.inner();
    i.stats.blobs_ingested += 1;
    i.stats.records_ingested += n;
    Ok(n)
}

/// Log the outcome and queue the notifications the message asked for.
fn finish(
    dm: &Dm,
    m: &Msg,
    log: &mut QueuedIngestion,
    outcome: Result<usize, Failure>,
    update_row: bool,
) {
    let now_text = timestamp_now();
    let op = crate::auth::uuid_v4();
    let activity = crate::auth::uuid_v4();
    let faults = dm.faults();
    let due = Instant::now() + faults.notification_delay;
    let to_queue = m.report_method == 0 || m.report_method == 2;
    let to_table = (m.report_method == 1 || m.report_method == 2) && m.report_level != 1;
    let mut notices = Vec::new();
    let row_fields;
    match &outcome {
        Ok(_) => {
            log.outcome = "Succeeded".into();
            if to_queue && m.report_level == 2 {
                let j = json!({
                    "OperationId": op, "Database": m.db, "Table": m.table,
                    "IngestionSourceId": m.id, "IngestionSourcePath": log.blob,
                    "RootActivityId": activity, "SucceededOn": now_text,
                });
                notices.push(NoticeKind::Queue {
                    url: dm.own_queue(&dm.names.succeeded),
                    text: crate::b64::encode(j.to_string().as_bytes()),
                    success: true,
                });
            }
            row_fields = json!({"Status": "Succeeded", "UpdatedOn": now_text,
                "OperationId": op, "ActivityId": activity});
        }
        Err(f) => {
            log.outcome = f.code.to_string();
            dm.inner().stats.failed_ingestions += 1;
            if to_queue && (m.report_level == 0 || m.report_level == 2) {
                let j = json!({
                    "OperationId": op, "Database": m.db, "Table": m.table, "FailedOn": now_text,
                    "IngestionSourceId": m.id, "IngestionSourcePath": log.blob,
                    "Details": f.details, "ErrorCode": f.code, "FailureStatus": f.status,
                    "RootActivityId": activity, "OriginatesFromUpdatePolicy": false,
                    "ShouldRetry": f.status != "Permanent",
                });
                notices.push(NoticeKind::Queue {
                    url: dm.own_queue(&dm.names.failed),
                    text: crate::b64::encode(j.to_string().as_bytes()),
                    success: false,
                });
            }
            row_fields = json!({"Status": "Failed", "UpdatedOn": now_text, "OperationId": op,
                "ActivityId": activity, "ErrorCode": f.code, "FailureStatus": f.status,
                "Details": f.details, "OriginatesFromUpdatePolicy": false});
        }
    }
    if to_table && update_row {
        if let Some((url, pk, rk)) = &m.status_row {
            let (base, _) = storage::split_sas(url);
            let ours = [&dm.cfg.storage.table, &dm.dead.table]
                .iter()
                .any(|t| base == format!("{t}/{}", dm.names.table));
            if !ours {
                dm.violation(format!(
                    "message {}: IngestionStatusInTable points at {base}, not this DM's status table",
                    m.id
                ));
            }
            // Written with the DM's own credentials, to its own table.
            notices.push(NoticeKind::Row {
                url: dm.own_table(),
                pk: pk.clone(),
                rk: rk.clone(),
                fields: row_fields,
            });
        }
    }
    let mut i = dm.inner();
    i.ingestions.push(log.clone());
    for kind in notices {
        i.notices.push(Notice { due, kind });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn faults_parse() {
        let f = parse_faults("throttle-mgmt=3\nsas-expired, ingest-delay-ms=200").unwrap();
        assert_eq!(f.throttle_mgmt, 3);
        assert!(f.sas_expired && !f.storage_unreachable);
        assert_eq!(f.ingest_delay, Duration::from_millis(200));
        assert_eq!(parse_faults("").unwrap(), DmFaults::default());
        assert!(parse_faults("nope").is_err());
        assert!(parse_faults("sas-expired=1").is_err());
        assert!(parse_faults("throttle-mgmt").is_err());
    }

    #[test]
    fn signatures_are_redacted() {
        assert_eq!(
            redact_sig(r#"{"a":"http://h/c/b?sv=1&sig=abc%2B&se=2","t":"x?sig=zz"}"#),
            r#"{"a":"http://h/c/b?sv=1&sig=REDACTED&se=2","t":"x?sig=REDACTED"}"#
        );
    }

    #[test]
    fn helpers() {
        assert_eq!(
            with_port("http://127.0.0.1:10000/devstoreaccount1", 9),
            "http://127.0.0.1:9/devstoreaccount1"
        );
        assert!(is_lower_uuid("0b9d6b1e-7c53-4b0e-9a39-2f6c1d6a0f11"));
        assert!(!is_lower_uuid("0B9D6B1E-7C53-4B0E-9A39-2F6C1D6A0F11"));
        assert!(!is_lower_uuid("0b9d6b1e7c534b0e9a392f6c1d6a0f11"));
    }
}
