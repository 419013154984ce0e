//! Spool administration for operators: what the spool holds, purging a table's chunks, requeueing refused ones.
//! Each call waits for a send in progress, like the sending calls, and touches only the spool.

use crate::config::LogLevel;
use crate::error::{Error, ErrorKind};
use crate::spool::{Area, DestFilter, Purged, Requeued, Spool, SpoolError, SpoolStatus};

use super::engine::spool_error;
use super::gate::Wait;
use super::report::SpoolStorage;
use super::Client;

impl Client {
    /// Enters the gate for a spool administration call (waits for a send in progress) and runs `f` on the spool.
    /// `InvalidArgument` without a spool.
    fn with_spool<T>(
        &self,
        f: impl FnOnce(&mut Spool<SpoolStorage>) -> Result<T, SpoolError>,
    ) -> Result<T, Error> {
        let Some(held) = self.gate.enter(Wait::Forever)? else {
            return Err(Error::new(ErrorKind::Internal, "gate not entered"));
        };
        let mut engine = self.engine();
        let Some(sp) = engine.spool.as_mut() else {
            return Err(Error::new(
                ErrorKind::InvalidArgument,
                "no spool configured: set spool.dir",
            ));
        };
        let r = f(sp).map_err(spool_error);
        engine.sync_spool_stats(&self.sh);
        drop(engine);
        drop(held);
        r
    }

    /// What the spool holds: pending chunks per destination and sink, and the quarantined, locked and newer ones.
    /// Waits for a send in progress on another thread; touches no file.
    pub fn spool_status(&self) -> Result<SpoolStatus, Error> {
        self.with_spool(|sp| Ok(sp.status()))
    }

    /// Deletes spooled chunks an operator no longer wants: those of one table (every format and mapping) or of
    /// all, pending ones and/or those in `rejected/` and `corrupt/`. Chunks in RAM are not touched.
    pub fn spool_purge(
        &self,
        filter: DestFilter<'_>,
        pending: bool,
        quarantine: bool,
    ) -> Result<Purged, Error> {
        let r = self.with_spool(|sp| {
            let mut areas: heapless::Vec<Area, 3> = heapless::Vec::new();
            if pending {
                let _ = areas.push(Area::Pending);
            }
            if quarantine {
                let _ = areas.push(Area::Rejected);
                let _ = areas.push(Area::Corrupt);
            }
            sp.purge(filter, &areas)
        })?;
        self.sh.log(
            LogLevel::Warn,
            &format!(
                "spool purged by request: {} pending chunks ({} records), {} rejected, {} corrupt",
                r.pending.chunks, r.pending.records, r.rejected.chunks, r.corrupt.chunks
            ),
        );
        Ok(r)
    }

    /// Moves refused chunks from `rejected/` back to the pending ones (after the cause was fixed: a mapping, a
    /// table's schema), of one table or all, within the spool's limits. They are sent by the next poll or flush.
    pub fn spool_requeue(&self, filter: DestFilter<'_>) -> Result<Requeued, Error> {
        let r = self.with_spool(|sp| sp.requeue_rejected(filter))?;
        self.sh.log(
            LogLevel::Warn,
            &format!(
                "spool: {} rejected chunks ({} records) requeued by request; {} left (spool full), {} skipped (damaged, other key or newer format)",
                r.chunks, r.records, r.left, r.skipped
            ),
        );
        Ok(r)
    }
}
