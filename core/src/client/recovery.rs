//! Opening the spool when a client starts: recovery (see [`crate::spool`]) and, for a person, what it found.

use crate::config::LogLevel;
use crate::error::Error;
use crate::spool::{Spool, SpoolConfig};

use super::engine::spool_error;
use super::report::SpoolStorage;
use super::Shared;

/// Opens the spool and says what recovery found.
pub fn open_spool(sh: &Shared, storage: SpoolStorage) -> Result<Spool<SpoolStorage>, Error> {
    let cfg = &sh.cfg;
    let scfg = SpoolConfig {
        max_bytes: cfg.spool_max_bytes,
        max_chunks: cfg.spool_max_chunks,
        policy: cfg.spool_policy,
        key: cfg.spool_key.as_ref().map(|k| k.0),
        trim_on_open: cfg.spool_trim_on_open,
        max_payload_len_queued: crate::spool::MAX_PAYLOAD_LEN,
        quarantine_max_bytes: cfg.spool_quarantine_max_bytes(),
        quarantine_max_chunks: cfg.spool_quarantine_max_chunks,
    };
    let (spool, report) = Spool::open(storage, scfg).map_err(spool_error)?;
    // Whatever open could not keep pending is data a person must hear about.
    if report.corrupt > 0 {
        sh.log(
            LogLevel::Error,
            &format!("spool: {} corrupt chunks (failed checksum or torn) moved to corrupt/, they will not be sent", report.corrupt),
        );
    }
    if report.dropped.chunks > 0 {
        sh.log(
            LogLevel::Error,
            &format!(
                "spool: dropped the {} oldest chunks ({} records, {} bytes) to fit the lowered limits (spool.trim_on_open=true)",
                report.dropped.chunks, report.dropped.records, report.dropped.bytes
            ),
        );
    }
    if report.locked > 0 {
        let wanted = if cfg.spool_key.is_some() {
            "sealed under another key, or stored in clear while spool.key_file is set"
        } else {
            "sealed, and no spool.key_file is set"
        };
        sh.log(
            LogLevel::Error,
            &format!(
                "spool: {} chunks ({} bytes) cannot be opened with this configuration ({wanted}): they are kept untouched and will be sent when the spool is opened with their key",
                report.locked, report.locked_bytes
            ),
        );
    }
    if report.newer > 0 {
        sh.log(
            LogLevel::Error,
            &format!(
                "spool: {} chunks ({} bytes) were written by newer firmware in a format this version cannot read: they are kept untouched for it",
                report.newer, report.newer_bytes
            ),
        );
    }
    if report.quarantine_dropped.chunks > 0 {
        sh.log(
            LogLevel::Warn,
            &format!(
                "spool: deleted the {} oldest quarantined chunks ({} bytes) to fit spool.quarantine_max_bytes / spool.quarantine_max_chunks",
                report.quarantine_dropped.chunks, report.quarantine_dropped.bytes
            ),
        );
    }
    if report.over_limit {
        sh.log(
            LogLevel::Error,
            &format!(
                "spool holds {} chunks ({} bytes), more than spool.max_chunks={} / spool.max_bytes={}: all are kept and replayed; new chunks are refused until it drains below the limits (set spool.trim_on_open=true to drop the oldest instead)",
                report.chunks, report.bytes, cfg.spool_max_chunks, cfg.spool_max_bytes
            ),
        );
    }
    if report.removed_partial > 0 {
        sh.log(
            LogLevel::Warn,
            &format!(
                "spool recovered: {} interrupted writes removed (never acknowledged as durable)",
                report.removed_partial
            ),
        );
    }
    if report.chunks > 0 {
        sh.log(
            LogLevel::Info,
            &format!(
                "spool holds {} chunks ({} bytes) to replay",
                report.chunks, report.bytes
            ),
        );
    }
    Ok(spool)
}
