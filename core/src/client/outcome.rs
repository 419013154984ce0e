//! Outcomes as data: one pure function from what a send came to and where the chunk lives to everything that
//! follows (the spool operation, the RAM buffer, the delivery report, the destination's backoff, what the caller
//! is told). The sender only carries the effects out, so every combination is pinned by one table test.

use crate::error::ErrorKind;
use crate::response::{Failure, FailureClass};
use crate::sink::Attempt;

/// What happened to one chunk's send.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SendResult {
    /// The service took it for good.
    Acknowledged,
    /// The DM's queue took it (queued ingestion): the data is the service's now.
    Queued,
    /// The service refused the data itself.
    Rejected,
    /// Not taken, for a reason that may pass (its class: transient, target not ready, auth).
    Kept(FailureClass),
    /// Not tried: the destination backs off, or the call's time ran out.
    NotTried,
}

impl SendResult {
    /// What a sink's answer on one chunk comes to, with the failure (for its message and status) when it failed.
    pub fn of(sent: Attempt) -> (SendResult, Option<Failure>) {
        match sent {
            Attempt::Acknowledged { .. } => (SendResult::Acknowledged, None),
            Attempt::Queued { .. } => (SendResult::Queued, None),
            Attempt::Failed(f) => {
                let r = match f.class {
                    FailureClass::Rejected => SendResult::Rejected,
                    c => SendResult::Kept(c),
                };
                (r, Some(f))
            }
        }
    }
}

/// Where the chunk is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Place {
    /// Only in RAM (a lane's buffer).
    Ram,
    /// Written ahead to the spool in this call, before its first send.
    SpoolNew,
    /// Read back from the spool (a replay).
    Spool,
}

/// What the spool does.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SpoolOp {
    /// Nothing.
    None,
    /// Write the RAM chunk to the spool.
    Push,
    /// Write the RAM chunk straight into the spool's `rejected/` (so an operator can requeue it).
    PushRejected,
    /// Delete the spooled chunk.
    Remove,
    /// Move the spooled chunk to `rejected/`.
    Quarantine,
}

/// What becomes of the RAM buffer that held the chunk (nothing for a replay: it is the sender's buffer).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RamOp {
    /// Emptied and given back to the lane.
    Free,
    /// Kept at the head of the lane, to be sent again.
    Keep,
}

/// The destination's backoff.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BackoffOp {
    /// The destination is fine: no wait before the next chunk.
    Reset,
    /// One more consecutive failure: wait longer.
    Grow,
    /// As it was.
    Unchanged,
}

/// The delivery report, when there is one. Final outcomes are reported once per chunk; `Failed` and `Spooled`
/// are intermediate.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Report {
    /// No report.
    None,
    /// Acknowledged (final).
    Acknowledged,
    /// Rejected (final).
    Rejected,
    /// Failed, kept in RAM (intermediate).
    Failed,
    /// Durable in the spool, to be replayed (intermediate).
    Spooled,
    /// Posted to the DM's queue (intermediate; final when reports are off).
    Queued,
}

/// Everything that follows one send.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Effects {
    /// The spool operation.
    pub spool: SpoolOp,
    /// The RAM buffer.
    pub ram: RamOp,
    /// The report.
    pub report: Report,
    /// The destination's backoff.
    pub backoff: BackoffOp,
    /// What the call returns for this chunk: `None` for success.
    pub caller: Option<ErrorKind>,
}

/// The error kind of a kept failure class.
pub fn kind_of(class: FailureClass) -> ErrorKind {
    match class {
        FailureClass::Transient => ErrorKind::TransientFailure,
        FailureClass::Rejected => ErrorKind::DataRejected,
        FailureClass::TargetNotReady => ErrorKind::TargetNotReady,
        FailureClass::Auth => ErrorKind::AuthRefused,
    }
}

/// The effects of a send. `spool_on`: the client has a spool it may write now (configured, and not backing off
/// after an I/O error). `write_ahead`: `spool.write_ahead` is on; for a chunk still in RAM it means the write
/// ahead was tried and failed, so the spool is not tried again for it in this call.
pub fn decide(result: SendResult, place: Place, spool_on: bool, write_ahead: bool) -> Effects {
    use BackoffOp::*;
    let e = |spool, ram, report, backoff, caller| Effects {
        spool,
        ram,
        report,
        backoff,
        caller,
    };
    match (result, place) {
        (SendResult::Acknowledged, Place::Ram) => e(
            SpoolOp::None,
            RamOp::Free,
            Report::Acknowledged,
            Reset,
            None,
        ),
        (SendResult::Acknowledged, _) => e(
            SpoolOp::Remove,
            RamOp::Free,
            Report::Acknowledged,
            Reset,
            None,
        ),
        // Queued: the blob and its message are the service's; the chunk leaves RAM and the spool at once, whatever
        // `queued.report` says. (With `all`, keeping it until the DM confirms needs the status tracker, which
        // would then remove it; until then a resend could only duplicate what the DM already has.)
        (SendResult::Queued, Place::Ram) => {
            e(SpoolOp::None, RamOp::Free, Report::Queued, Reset, None)
        }
        (SendResult::Queued, _) => e(SpoolOp::Remove, RamOp::Free, Report::Queued, Reset, None),
        // Refused data says nothing against the destination: the next chunk goes at once.
        (SendResult::Rejected, Place::Ram) if spool_on => e(
            SpoolOp::PushRejected,
            RamOp::Free,
            Report::Rejected,
            Reset,
            Some(ErrorKind::DataRejected),
        ),
        (SendResult::Rejected, Place::Ram) => e(
            SpoolOp::None,
            RamOp::Free,
            Report::Rejected,
            Reset,
            Some(ErrorKind::DataRejected),
        ),
        (SendResult::Rejected, _) => e(
            SpoolOp::Quarantine,
            RamOp::Free,
            Report::Rejected,
            Reset,
            Some(ErrorKind::DataRejected),
        ),
        (SendResult::Kept(_), Place::Ram) if spool_on && !write_ahead => e(
            SpoolOp::Push,
            RamOp::Free,
            Report::Spooled,
            Grow,
            Some(ErrorKind::Spooled),
        ),
        (SendResult::Kept(c), Place::Ram) => e(
            SpoolOp::None,
            RamOp::Keep,
            Report::Failed,
            Grow,
            Some(kind_of(c)),
        ),
        // Written ahead in this call: durable already, and the caller learns just that.
        (SendResult::Kept(_), Place::SpoolNew) => e(
            SpoolOp::None,
            RamOp::Free,
            Report::Spooled,
            Grow,
            Some(ErrorKind::Spooled),
        ),
        // A replay that failed again: it stays where it is, reported already when it was spooled.
        (SendResult::Kept(c), Place::Spool) => e(
            SpoolOp::None,
            RamOp::Free,
            Report::None,
            Grow,
            Some(kind_of(c)),
        ),
        (SendResult::NotTried, Place::Ram) if spool_on => e(
            SpoolOp::Push,
            RamOp::Free,
            Report::Spooled,
            Unchanged,
            Some(ErrorKind::Spooled),
        ),
        (SendResult::NotTried, Place::Ram) => e(
            SpoolOp::None,
            RamOp::Keep,
            Report::None,
            Unchanged,
            Some(ErrorKind::BackingOff),
        ),
        (SendResult::NotTried, Place::SpoolNew) => e(
            SpoolOp::None,
            RamOp::Free,
            Report::Spooled,
            Unchanged,
            Some(ErrorKind::Spooled),
        ),
        (SendResult::NotTried, Place::Spool) => {
            e(SpoolOp::None, RamOp::Free, Report::None, Unchanged, None)
        }
    }
}

/// The effects when the spool write that [`decide`] asked for failed with `spool_error` (`SpoolFull`, `SpoolIo`):
/// a kept chunk stays in RAM and the caller hears why it is not durable; refused data is dropped all the same
/// (it can never be sent) and the caller hears that it was refused.
pub fn push_failed(planned: Effects, spool_error: ErrorKind) -> Effects {
    match planned.spool {
        SpoolOp::Push => Effects {
            spool: SpoolOp::None,
            ram: RamOp::Keep,
            report: Report::Failed,
            backoff: planned.backoff,
            caller: Some(spool_error),
        },
        _ => Effects {
            spool: SpoolOp::None,
            ..planned
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ErrorKind as K;
    use FailureClass as C;

    #[test]
    fn every_combination() {
        use BackoffOp::*;
        use Place::*;
        use RamOp::*;
        use Report as R;
        use SendResult as S;
        use SpoolOp as O;
        // (result, place, spool on, write ahead) -> (spool, ram, report, backoff, caller)
        #[rustfmt::skip]
        type Row = (S, Place, bool, bool, O, RamOp, R, BackoffOp, Option<K>);
        let table: &[Row] = &[
            (
                S::Queued,
                Ram,
                false,
                false,
                O::None,
                Free,
                R::Queued,
                Reset,
                None,
            ),
            (
                S::Queued,
                Ram,
                true,
                false,
                O::None,
                Free,
                R::Queued,
                Reset,
                None,
            ),
            (
                S::Queued,
                Ram,
                true,
                true,
                O::None,
                Free,
                R::Queued,
                Reset,
                None,
            ),
            (
                S::Queued,
                SpoolNew,
                true,
                true,
                O::Remove,
                Free,
                R::Queued,
                Reset,
                None,
            ),
            (
                S::Queued,
                Spool,
                true,
                false,
                O::Remove,
                Free,
                R::Queued,
                Reset,
                None,
            ),
            (
                S::Queued,
                Spool,
                false,
                false,
                O::Remove,
                Free,
                R::Queued,
                Reset,
                None,
            ),
            (
                S::Acknowledged,
                Ram,
                false,
                false,
                O::None,
                Free,
                R::Acknowledged,
                Reset,
                None,
            ),
            (
                S::Acknowledged,
                Ram,
                true,
                false,
                O::None,
                Free,
                R::Acknowledged,
                Reset,
                None,
            ),
            (
                S::Acknowledged,
                Ram,
                true,
                true,
                O::None,
                Free,
                R::Acknowledged,
                Reset,
                None,
            ),
            (
                S::Acknowledged,
                SpoolNew,
                true,
                true,
                O::Remove,
                Free,
                R::Acknowledged,
                Reset,
                None,
            ),
            (
                S::Acknowledged,
                Spool,
                true,
                false,
                O::Remove,
                Free,
                R::Acknowledged,
                Reset,
                None,
            ),
            (
                S::Acknowledged,
                Spool,
                false,
                false,
                O::Remove,
                Free,
                R::Acknowledged,
                Reset,
                None,
            ),
            (
                S::Rejected,
                Ram,
                false,
                false,
                O::None,
                Free,
                R::Rejected,
                Reset,
                Some(K::DataRejected),
            ),
            (
                S::Rejected,
                Ram,
                true,
                false,
                O::PushRejected,
                Free,
                R::Rejected,
                Reset,
                Some(K::DataRejected),
            ),
            (
                S::Rejected,
                Ram,
                true,
                true,
                O::PushRejected,
                Free,
                R::Rejected,
                Reset,
                Some(K::DataRejected),
            ),
            (
                S::Rejected,
                SpoolNew,
                true,
                true,
                O::Quarantine,
                Free,
                R::Rejected,
                Reset,
                Some(K::DataRejected),
            ),
            (
                S::Rejected,
                Spool,
                true,
                false,
                O::Quarantine,
                Free,
                R::Rejected,
                Reset,
                Some(K::DataRejected),
            ),
            (
                S::Kept(C::Transient),
                Ram,
                false,
                false,
                O::None,
                Keep,
                R::Failed,
                Grow,
                Some(K::TransientFailure),
            ),
            (
                S::Kept(C::TargetNotReady),
                Ram,
                false,
                false,
                O::None,
                Keep,
                R::Failed,
                Grow,
                Some(K::TargetNotReady),
            ),
            (
                S::Kept(C::Auth),
                Ram,
                false,
                false,
                O::None,
                Keep,
                R::Failed,
                Grow,
                Some(K::AuthRefused),
            ),
            (
                S::Kept(C::Transient),
                Ram,
                true,
                false,
                O::Push,
                Free,
                R::Spooled,
                Grow,
                Some(K::Spooled),
            ),
            (
                S::Kept(C::Auth),
                Ram,
                true,
                false,
                O::Push,
                Free,
                R::Spooled,
                Grow,
                Some(K::Spooled),
            ),
            (
                S::Kept(C::Transient),
                Ram,
                true,
                true,
                O::None,
                Keep,
                R::Failed,
                Grow,
                Some(K::TransientFailure),
            ),
            (
                S::Kept(C::Transient),
                SpoolNew,
                true,
                true,
                O::None,
                Free,
                R::Spooled,
                Grow,
                Some(K::Spooled),
            ),
            (
                S::Kept(C::TargetNotReady),
                SpoolNew,
                true,
                true,
                O::None,
                Free,
                R::Spooled,
                Grow,
                Some(K::Spooled),
            ),
            (
                S::Kept(C::Transient),
                Spool,
                true,
                false,
                O::None,
                Free,
                R::None,
                Grow,
                Some(K::TransientFailure),
            ),
            (
                S::Kept(C::Auth),
                Spool,
                true,
                true,
                O::None,
                Free,
                R::None,
                Grow,
                Some(K::AuthRefused),
            ),
            (
                S::NotTried,
                Ram,
                false,
                false,
                O::None,
                Keep,
                R::None,
                Unchanged,
                Some(K::BackingOff),
            ),
            (
                S::NotTried,
                Ram,
                false,
                true,
                O::None,
                Keep,
                R::None,
                Unchanged,
                Some(K::BackingOff),
            ),
            (
                S::NotTried,
                Ram,
                true,
                false,
                O::Push,
                Free,
                R::Spooled,
                Unchanged,
                Some(K::Spooled),
            ),
            (
                S::NotTried,
                Ram,
                true,
                true,
                O::Push,
                Free,
                R::Spooled,
                Unchanged,
                Some(K::Spooled),
            ),
            (
                S::NotTried,
                SpoolNew,
                true,
                true,
                O::None,
                Free,
                R::Spooled,
                Unchanged,
                Some(K::Spooled),
            ),
            (
                S::NotTried,
                Spool,
                true,
                false,
                O::None,
                Free,
                R::None,
                Unchanged,
                None,
            ),
        ];
        for &(result, place, spool_on, wa, spool, ram, report, backoff, caller) in table {
            assert_eq!(
                decide(result, place, spool_on, wa),
                Effects {
                    spool,
                    ram,
                    report,
                    backoff,
                    caller
                },
                "{result:?} {place:?} spool_on={spool_on} write_ahead={wa}"
            );
        }
        // Whatever the combination, data that may still be delivered is kept in RAM or made durable.
        let results = [
            S::Acknowledged,
            S::Queued,
            S::Rejected,
            S::Kept(C::Transient),
            S::Kept(C::TargetNotReady),
            S::Kept(C::Auth),
            S::NotTried,
        ];
        for r in results {
            for p in [Ram, SpoolNew, Spool] {
                for on in [false, true] {
                    for wa in [false, true] {
                        let e = decide(r, p, on, wa);
                        if matches!(r, S::Kept(_) | S::NotTried) {
                            // Data that may still be delivered is never let go without being durable.
                            assert!(
                                e.ram == Keep || e.spool == O::Push || p != Ram,
                                "{r:?} {p:?} {on} {wa}"
                            );
                            assert_ne!(e.spool, O::Remove);
                        }
                        if !on && p == Ram {
                            assert!(matches!(e.spool, O::None), "no spool, no spool op: {r:?}");
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn a_failed_spool_write_keeps_the_chunk_in_ram() {
        let planned = decide(SendResult::Kept(C::Transient), Place::Ram, true, false);
        let e = push_failed(planned, K::SpoolFull);
        assert_eq!(
            (e.spool, e.ram, e.report, e.caller),
            (
                SpoolOp::None,
                RamOp::Keep,
                Report::Failed,
                Some(K::SpoolFull)
            )
        );
        let planned = decide(SendResult::NotTried, Place::Ram, true, false);
        let e = push_failed(planned, K::SpoolIo);
        assert_eq!(
            (e.ram, e.backoff, e.caller),
            (RamOp::Keep, BackoffOp::Unchanged, Some(K::SpoolIo))
        );
        // Refused data cannot be kept for a resend: dropped, and still reported as refused.
        let planned = decide(SendResult::Rejected, Place::Ram, true, false);
        let e = push_failed(planned, K::SpoolIo);
        assert_eq!(
            (e.spool, e.ram, e.report, e.caller),
            (
                SpoolOp::None,
                RamOp::Free,
                Report::Rejected,
                Some(K::DataRejected)
            )
        );
    }
}
