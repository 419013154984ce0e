//! The client's counters: atomics, readable at any time from any thread without a lock.

use std::sync::atomic::AtomicU64;
use std::sync::atomic::Ordering::Relaxed;

macro_rules! counters {
    ($(#[$m:meta])* $name:ident / $snap:ident { $($(#[$fm:meta])* $field:ident,)* }) => {
        /// Counters, readable at any time without taking the client's lock.
        #[derive(Default, Debug)]
        pub struct $name { $($(#[$fm])* pub $field: AtomicU64,)* }
        /// A plain copy of the counters.
        #[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
        pub struct $snap { $($(#[$fm])* pub $field: u64,)* }
        impl $name {
            /// Copies every counter.
            pub fn snapshot(&self) -> $snap { $snap { $($field: self.$field.load(Relaxed),)* } }
        }
    };
}

counters! {
    Stats / StatsSnapshot {
        /// Records taken by `append`. This one, `bytes_appended` and `records_buffered` are counted by the
        /// lanes, under the lock `append` takes anyway, and filled in by `Client::stats`: their atomics here stay 0.
        records_appended,
        /// Raw bytes taken by `append`.
        bytes_appended,
        /// Records in requests sent, whatever the answer (counted once per request).
        records_sent,
        /// Raw bytes in requests sent.
        bytes_sent_raw,
        /// Body bytes on the wire.
        bytes_sent_wire,
        /// Records the service acknowledged.
        records_acknowledged,
        /// Chunks the service acknowledged.
        chunks_acknowledged,
        /// Records the service refused permanently (dropped or quarantined).
        records_rejected,
        /// Chunks the service refused permanently.
        chunks_rejected,
        /// HTTP requests made.
        requests,
        /// Requests that resent a chunk.
        retries,
        /// Requests that failed, any class.
        failures,
        /// Records in RAM now.
        records_buffered,
        /// Status of the last answer (0: none yet, or no answer).
        last_http_status,
        /// Destinations added.
        destinations,
        /// Chunks written to the spool.
        chunks_spooled,
        /// Records written to the spool.
        records_spooled,
        /// Bytes written to the spool (payloads: the compressed size).
        bytes_spooled,
        /// Spooled chunks the service acknowledged.
        chunks_replayed,
        /// Records of spooled chunks the service acknowledged.
        records_replayed,
        /// Chunks the full spool dropped (policy drop-oldest).
        chunks_dropped,
        /// Records the full spool dropped.
        records_dropped,
        /// Bytes the full spool dropped.
        bytes_dropped,
        /// Chunks found corrupt in the spool (quarantined in `corrupt/`, never sent).
        chunks_corrupt,
        /// Chunks in the spool now.
        spool_chunks,
        /// Bytes in the spool now.
        spool_bytes,
        /// Spool writes, removals and moves that failed (read-only or failing flash, full disk): each one is also
        /// logged at error level and returned as `SpoolIo` by the call it happened in.
        spool_io_errors,
        /// Chunks found at open that the configured `spool.key_file` cannot open (another key, no key, or a
        /// plain chunk with a key): kept untouched, never sent, until a client opens the spool with their key.
        chunks_locked,
        /// Appends refused with `QueueFull` (the lane's batch and sealed chunks were all waiting).
        appends_queue_full,
        /// Chunks in the spool's quarantine now (`rejected/` and `corrupt/`).
        quarantine_chunks,
        /// Their bytes.
        quarantine_bytes,
        /// Quarantined chunks deleted to keep the quarantine within its limits (oldest first).
        quarantine_dropped_chunks,
        /// Chunks of a newer firmware's format found at open: kept untouched, never read.
        chunks_newer,
        /// Records posted to the DM's queue (queued ingestion; also counted in `records_acknowledged`).
        records_queued,
        /// Chunks posted to the DM's queue.
        chunks_queued,
        /// Records of queued chunks the DM reported ingested (`queued.report` = `all`).
        records_ingested,
        /// Queued chunks the DM reported ingested.
        chunks_ingested,
    }
}
