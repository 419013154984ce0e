//! The DM's answers to `.get ingestion resources` and `.get kusto identity token` (v1 data sets, read by column
//! name), and when to ask again: hourly, ahead of need, keeping the old ones when a refresh fails.
//!
//! Every URL here carries a SAS signature: held in [`SecretString`]s, never logged, never written to the spool.

use std::time::{Duration, Instant};

use crate::json::Parser;
use crate::secret::SecretString;

/// What one resource row is for. Other types (the DM adds some now and then) are ignored.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// `SecuredReadyForAggregationQueue`: where ingestion messages go.
    IngestQueue,
    /// `TempStorage`: a blob container for uploads.
    Container,
    /// `FailedIngestionsQueue`.
    FailedQueue,
    /// `SuccessfulIngestionsQueue`.
    SuccessQueue,
    /// `IngestionsStatusTable`.
    StatusTable,
}

impl Kind {
    fn parse(name: &str) -> Option<Kind> {
        Some(match name {
            "SecuredReadyForAggregationQueue" => Kind::IngestQueue,
            "TempStorage" => Kind::Container,
            "FailedIngestionsQueue" => Kind::FailedQueue,
            "SuccessfulIngestionsQueue" => Kind::SuccessQueue,
            "IngestionsStatusTable" => Kind::StatusTable,
            _ => return None,
        })
    }
}

/// One storage URL with its SAS.
#[derive(Clone, Debug)]
pub struct StorageUrl {
    /// `https://acct.blob.core.windows.net/container?sv=...`: secret.
    pub url: SecretString,
    /// The storage account (first DNS label of the host, or the first path segment for path-style URLs such as
    /// Azurite's), which the ranking counts successes by.
    pub account: heapless::String<64>,
}

/// The resources of one refresh.
#[derive(Clone, Debug, Default)]
pub struct Resources {
    /// Ingestion queues.
    pub queues: Vec<StorageUrl>,
    /// Blob containers.
    pub containers: Vec<StorageUrl>,
    /// Failure notification queues.
    pub failed: Vec<StorageUrl>,
    /// Success notification queues.
    pub succeeded: Vec<StorageUrl>,
    /// Status tables.
    pub status_tables: Vec<StorageUrl>,
}

/// At most this many rows are kept per type: real DMs hand out a handful, and memory is bounded.
pub const MAX_PER_KIND: usize = 32;

/// Reads `.get ingestion resources`. `None` when the answer is no v1 data set with both columns, or names
/// neither a queue nor a container (nothing could be sent with it).
pub fn parse_resources(body: &[u8]) -> Option<Resources> {
    let mut r = Resources::default();
    v1_rows(body, &["ResourceTypeName", "StorageRoot"], |cells| {
        let Some(kind) = cells[0].as_deref().and_then(Kind::parse) else {
            return;
        };
        let Some(url) = cells[1].take() else {
            return;
        };
        let url = SecretString::new(url);
        let Some(account) = account_of(url.expose()) else {
            return;
        };
        let list = match kind {
            Kind::IngestQueue => &mut r.queues,
            Kind::Container => &mut r.containers,
            Kind::FailedQueue => &mut r.failed,
            Kind::SuccessQueue => &mut r.succeeded,
            Kind::StatusTable => &mut r.status_tables,
        };
        if list.len() < MAX_PER_KIND {
            list.push(StorageUrl { url, account });
        }
    })?;
    (!r.queues.is_empty() && !r.containers.is_empty()).then_some(r)
}

/// Reads `.get kusto identity token`: the one `AuthorizationContext` cell.
pub fn parse_identity_token(body: &[u8]) -> Option<SecretString> {
    let mut token = None;
    v1_rows(body, &["AuthorizationContext"], |cells| {
        if token.is_none() {
            token = cells[0].take().filter(|t| !t.is_empty());
        }
    })?;
    token.map(SecretString::new)
}

/// The account a storage URL belongs to: `acct` of `https://acct.blob.core.windows.net/...`; for an IP or
/// localhost host (Azurite's path-style URLs, `http://127.0.0.1:10000/devstoreaccount1/...`) the first path
/// segment.
pub fn account_of(url: &str) -> Option<heapless::String<64>> {
    let (_, host) = crate::transport::split_url(url)?;
    let rest = url.split_once("://")?.1;
    let path = rest.find('/').map_or("", |i| &rest[i + 1..]);
    let name = if host.parse::<std::net::IpAddr>().is_ok() || crate::wire::is_loopback_host(host) {
        path.split(['/', '?']).next().unwrap_or("")
    } else {
        host.split('.').next().unwrap_or("")
    };
    if name.is_empty() {
        return None;
    }
    heapless::String::try_from(&name[..name.len().min(64)]).ok()
}

/// Walks the first table of a v1 data set (`{"Tables":[{"Columns":[..],"Rows":[..]}]}`), calling `f` with the
/// cells of `wanted` (by column name, any position; string cells only, others `None`) for every row. Extra
/// columns and tables are skipped. Two passes, so the order of `Columns` and `Rows` does not matter.
pub fn v1_rows(
    body: &[u8],
    wanted: &[&str],
    mut f: impl FnMut(&mut [Option<String>]),
) -> Option<()> {
    const MAX_WANTED: usize = 4;
    debug_assert!(wanted.len() <= MAX_WANTED);
    // Pass 1: where each wanted column is, and where the rows start.
    let mut cols: [Option<usize>; MAX_WANTED] = [None; MAX_WANTED];
    let mut rows_at = None;
    first_table(body, |p, key| match key {
        b"Columns" => {
            let mut i = 0;
            p.array(|p| {
                let here = i;
                i += 1;
                p.object(|p, k| {
                    if k == b"ColumnName" {
                        let name = p.text()?;
                        if let Some(w) = wanted.iter().position(|w| *w == name) {
                            cols[w] = Some(here);
                        }
                        Some(())
                    } else {
                        p.skip_value()
                    }
                })
            })
        }
        b"Rows" => {
            rows_at = Some(p.pos());
            p.skip_value()
        }
        _ => p.skip_value(),
    })?;
    if cols[..wanted.len()].iter().any(Option::is_none) {
        return None;
    }
    let mut p = Parser::at(body, rows_at?);
    let mut cells: [Option<String>; MAX_WANTED] = Default::default();
    p.array(|p| {
        for c in cells.iter_mut() {
            *c = None;
        }
        let mut i = 0;
        p.array(|p| {
            let here = i;
            i += 1;
            match cols[..wanted.len()].iter().position(|&c| c == Some(here)) {
                Some(w) if p.peek_byte() == Some(b'"') => {
                    cells[w] = Some(p.text()?);
                    Some(())
                }
                _ => p.skip_value(),
            }
        })?;
        f(&mut cells[..wanted.len()]);
        Some(())
    })
}

/// Calls `f` for every key of the first object of `Tables`.
fn first_table<'a>(
    body: &'a [u8],
    mut f: impl FnMut(&mut Parser<'a>, &'a [u8]) -> Option<()>,
) -> Option<()> {
    let mut p = Parser::new(body);
    let mut seen = false;
    p.object(|p, key| {
        if key != b"Tables" {
            return p.skip_value();
        }
        let mut first = true;
        p.array(|p| {
            if std::mem::take(&mut first) {
                seen = true;
                p.object(&mut f)
            } else {
                p.skip_value()
            }
        })
    })?;
    (seen && p.at_end()).then_some(())
}

/// How often resources and the identity token are fetched again (every SDK: one hour).
pub const REFRESH_EVERY: Duration = Duration::from_secs(3600);
/// Resources older than this are not used any more, however the refresh fares: the DM's SAS lasts about 12 h.
pub const MAX_AGE: Duration = Duration::from_secs(6 * 3600);
/// A failed refresh is tried again after this, doubling up to [`REFRESH_RETRY_MAX`] (Java waits 1 minute).
pub const REFRESH_RETRY_BASE: Duration = Duration::from_secs(15);
/// Cap of the wait between failed refreshes.
pub const REFRESH_RETRY_MAX: Duration = Duration::from_secs(300);

/// When to fetch: the token cache's idea (refresh ahead of need, keep what works, back off) as a pure value.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Schedule {
    /// When the resources in hand were fetched; `None`: none in hand.
    pub fetched_at: Option<Instant>,
    /// Do not try again before this (after a failure).
    pub not_before: Option<Instant>,
    /// Failed refreshes in a row.
    pub failures: u32,
    /// A storage 403 asked for a refresh.
    pub forced: bool,
}

/// What to do before a send.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Plan {
    /// Use what is in hand.
    Use,
    /// Fetch; on failure fall back to what is in hand.
    Refresh,
    /// Fetch; there is nothing usable to fall back to.
    Fetch,
    /// Nothing usable and a failed fetch is backing off: fail now without a request.
    Wait,
}

impl Schedule {
    /// The plan at `now`.
    pub fn plan(&self, now: Instant) -> Plan {
        let usable = self
            .fetched_at
            .is_some_and(|t| now.saturating_duration_since(t) < MAX_AGE);
        let may_try = self.not_before.is_none_or(|n| now >= n);
        let due = self
            .fetched_at
            .is_none_or(|t| now.saturating_duration_since(t) >= REFRESH_EVERY)
            || self.forced;
        match (usable, due, may_try) {
            (true, false, _) | (true, true, false) => Plan::Use,
            (true, true, true) => Plan::Refresh,
            (false, _, true) => Plan::Fetch,
            (false, _, false) => Plan::Wait,
        }
    }

    /// A fetch succeeded at `now`.
    pub fn fetched(&mut self, now: Instant) {
        *self = Schedule {
            fetched_at: Some(now),
            not_before: None,
            failures: 0,
            forced: false,
        };
    }

    /// A fetch failed at `now`: back off (the one backoff function, without jitter: one fetch per client).
    pub fn failed(&mut self, now: Instant) {
        self.failures = self.failures.saturating_add(1);
        let wait = crate::retry::Backoff {
            base: REFRESH_RETRY_BASE,
            max: REFRESH_RETRY_MAX,
            retry_after_cap: REFRESH_RETRY_MAX,
        }
        .delay(self.failures, u32::MAX, None);
        self.not_before = Some(now + wait);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DOC: &str = r#"{"Tables":[{"TableName":"Table_0","Columns":[{"ColumnName":"ResourceTypeName","DataType":"String"},
        {"ColumnName":"StorageRoot","DataType":"String"}],
        "Rows":[["SecuredReadyForAggregationQueue","https://acct1.queue.core.windows.net/readyforaggregation-secured?sv=1&sig=a"],
          ["FailedIngestionsQueue","https://acct1.queue.core.windows.net/failedingestions?sv=..."],
          ["SuccessfulIngestionsQueue","https://acct1.queue.core.windows.net/successfulingestions?sv=..."],
          ["TempStorage","https://acct2.blob.core.windows.net/20261201-ingestdata-e5c334ee145d4b4-0?sv=..."],
          ["IngestionsStatusTable","https://acct1.table.core.windows.net/ingestionsstatus?sv=..."]]}]}"#;

    #[test]
    fn the_documented_answer_is_read_by_type() {
        let r = parse_resources(DOC.as_bytes()).unwrap();
        assert_eq!(r.queues.len(), 1);
        assert_eq!(
            r.queues[0].url.expose(),
            "https://acct1.queue.core.windows.net/readyforaggregation-secured?sv=1&sig=a"
        );
        assert_eq!(r.queues[0].account.as_str(), "acct1");
        assert_eq!(r.containers[0].account.as_str(), "acct2");
        assert_eq!(
            (r.failed.len(), r.succeeded.len(), r.status_tables.len()),
            (1, 1, 1)
        );
    }

    #[test]
    fn columns_are_found_by_name_whatever_their_order_and_extra_columns_or_types() {
        let doc = r#"{"Tables":[{"TableName":"Table_0",
            "Rows":[[1,"https://a.blob.core.windows.net/c?sig=x\u0026sv=2","TempStorage",null],
                    [2,"https://b.queue.core.windows.net/q?sig=y","SecuredReadyForAggregationQueue","z"],
                    [3,"https://b.queue.core.windows.net/q2","SomethingNew","z"],
                    [4,7,"TempStorage","z"]],
            "Columns":[{"ColumnName":"Ordinal","DataType":"Int32"},{"ColumnName":"StorageRoot","DataType":"String"},
                       {"ColumnName":"ResourceTypeName","DataType":"String"},{"ColumnName":"Extra","DataType":"String"}]},
            {"TableName":"Table_1","Columns":[],"Rows":[]}]}"#;
        let r = parse_resources(doc.as_bytes()).unwrap();
        assert_eq!(r.containers.len(), 1, "a non-string cell is skipped");
        assert_eq!(
            r.containers[0].url.expose(),
            "https://a.blob.core.windows.net/c?sig=x&sv=2"
        );
        assert_eq!(r.queues.len(), 1, "unknown types are ignored, not fatal");
    }

    #[test]
    fn answers_without_the_columns_or_a_queue_are_refused() {
        assert!(parse_resources(b"{}").is_none());
        assert!(parse_resources(b"{\"Tables\":[]}").is_none());
        assert!(parse_resources(
            br#"{"Tables":[{"Columns":[{"ColumnName":"StorageRoot"}],"Rows":[["x"]]}]}"#
        )
        .is_none());
        // Only a container: nothing to post the message to.
        let only = r#"{"Tables":[{"Columns":[{"ColumnName":"ResourceTypeName"},{"ColumnName":"StorageRoot"}],
            "Rows":[["TempStorage","https://a.blob.core.windows.net/c?s"]]}]}"#;
        assert!(parse_resources(only.as_bytes()).is_none());
        assert!(parse_resources(b"{\"Tables\":[{\"Columns\":[").is_none());
        assert!(parse_resources(&DOC.as_bytes()[..DOC.len() - 3]).is_none());
    }

    #[test]
    fn the_identity_token_is_one_cell() {
        let doc = br#"{"Tables":[{"TableName":"Table_0","Columns":[{"ColumnName":"AuthorizationContext","DataType":"String"}],"Rows":[["opaque\/token"]]}]}"#;
        assert_eq!(parse_identity_token(doc).unwrap().expose(), "opaque/token");
        let empty =
            br#"{"Tables":[{"Columns":[{"ColumnName":"AuthorizationContext"}],"Rows":[[""]]}]}"#;
        assert!(parse_identity_token(empty).is_none());
    }

    #[test]
    fn accounts_come_from_the_host_or_azurites_path() {
        let a = |u: &str| account_of(u).map(|a| a.as_str().to_owned());
        assert_eq!(
            a("https://acct.blob.core.windows.net/c?x").as_deref(),
            Some("acct")
        );
        assert_eq!(
            a("http://127.0.0.1:10000/devstoreaccount1/c?x").as_deref(),
            Some("devstoreaccount1")
        );
        assert_eq!(a("ftp://x/y"), None);
    }

    #[test]
    fn refreshes_hourly_keeps_old_resources_and_backs_off() {
        let t0 = Instant::now();
        let mut s = Schedule {
            fetched_at: None,
            not_before: None,
            failures: 0,
            forced: false,
        };
        assert_eq!(s.plan(t0), Plan::Fetch);
        s.failed(t0);
        assert_eq!(s.plan(t0 + Duration::from_secs(1)), Plan::Wait);
        assert_eq!(s.plan(t0 + REFRESH_RETRY_BASE), Plan::Fetch);
        s.fetched(t0);
        assert_eq!(s.plan(t0 + Duration::from_secs(3599)), Plan::Use);
        let hour = t0 + REFRESH_EVERY;
        assert_eq!(s.plan(hour), Plan::Refresh);
        // A failed refresh keeps the old ones in use, and does not try again at once.
        s.failed(hour);
        assert_eq!(s.plan(hour + Duration::from_secs(1)), Plan::Use);
        assert_eq!(s.plan(hour + REFRESH_RETRY_BASE), Plan::Refresh);
        // Too old to trust: no fallback.
        assert_eq!(s.plan(t0 + MAX_AGE), Plan::Fetch);
        // A storage 403 forces a refresh.
        s.fetched(t0);
        s.forced = true;
        assert_eq!(s.plan(t0 + Duration::from_secs(1)), Plan::Refresh);
    }
}
