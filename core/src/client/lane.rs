//! Lanes: one per destination, each with its own lock, its filling batch and at most `batch.sealed` sealed
//! chunks waiting for the sender. `append` only ever takes a lane's lock, for as long as it takes to copy one
//! record (and, when the batch is full, to move it aside): never while anything is sent, compressed or written
//! to flash, and never a lock another destination uses.
//!
//! Buffers: a lane owns at most `1 + batch.sealed` batch buffers of `batch.bytes` each (the filling batch, the
//! sealed ones and the one the sender holds), allocated on first need and kept; memory never grows past that.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::time::{Duration, Instant};

use crate::batch::{validate_record, Batch};
use crate::error::{Error, ErrorKind};
use crate::spool::DestKey;
use crate::wire::Format;

/// What becomes of a batch the sender gives back.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Return {
    /// Delivered, refused or durable in the spool: the buffer is free again.
    Free,
    /// Still to be sent: back to the head of the lane, before newer chunks.
    Keep,
}

struct State {
    filling: Batch,
    sealed: VecDeque<Batch>,
    spare: Vec<Batch>,
    /// Batches the sender holds.
    out: usize,
    /// Buffers allocated so far, the filling one included.
    buffers: usize,
    /// An append found the filling batch full and no buffer to seal it into: it is due now.
    full: bool,
    /// Records and bytes taken by `append` since the lane was made: counted here, under the lock `append` holds
    /// anyway, not in the client's atomics, whose three locked adds per record (each waiting for the record's
    /// copy to drain from the store buffer) were a fifth of `append`'s CPU. [`Lane::appended`] reads them.
    appended_records: u64,
    appended_bytes: u64,
}

/// One destination's slot in the client.
pub struct Lane {
    /// The destination id.
    pub id: u32,
    /// Database, table, format and mapping.
    pub key: Arc<DestKey>,
    /// The format, parsed.
    pub format: Format,
    capacity: usize,
    sealed_max: usize,
    /// Whether `json` records are syntax-checked (`json.check`).
    json_check: bool,
    state: Mutex<State>,
}

/// What one `append` did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Appended {
    /// The full batch was sealed to make room: the sender has work.
    pub sealed: bool,
}

impl Lane {
    /// A lane for batches of `capacity` bytes with up to `sealed_max` sealed chunks (0: a single buffer, and a
    /// full batch refuses records until the sender has sent it). Allocates the filling batch now; the others on
    /// first need.
    pub fn new(id: u32, key: DestKey, format: Format, capacity: usize, sealed_max: usize) -> Lane {
        Lane {
            id,
            key: Arc::new(key),
            format,
            capacity,
            sealed_max,
            json_check: true,
            state: Mutex::new(State {
                filling: Batch::with_capacity(capacity),
                sealed: VecDeque::with_capacity(sealed_max + 1),
                spare: Vec::with_capacity(sealed_max + 1),
                out: 0,
                buffers: 1,
                full: false,
                appended_records: 0,
                appended_bytes: 0,
            }),
        }
    }

    /// Whether `append` checks the syntax of `json` records (`json.check`; on by default). `multijson` records are
    /// checked either way.
    pub fn json_check(mut self, on: bool) -> Lane {
        self.json_check = on;
        self
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while the lock was held leaves every batch whole (records are pushed in one step): go on.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Takes one record: into the filling batch, or, when it does not fit, into a fresh batch after sealing the
    /// full one. `QueueFull` when all `batch.sealed` slots are taken (the record is not taken).
    pub fn append(&self, record: &[u8], now: impl FnOnce() -> Instant) -> Result<Appended, Error> {
        validate_record(self.format, record, self.capacity, self.json_check)?;
        let mut st = self.lock();
        let mut sealed = false;
        if !st.filling.fits(self.format, record) {
            // A buffer for the record: the filling one is full (seal it) or with the sender (a placeholder).
            let placeholder = st.filling.capacity() == 0;
            match (placeholder || !st.filling.is_empty())
                .then(|| self.acquire(&mut st))
                .flatten()
            {
                Some(fresh) => {
                    let full = std::mem::replace(&mut st.filling, fresh);
                    if !placeholder {
                        st.sealed.push_back(full);
                        sealed = true;
                    }
                }
                None => {
                    st.full = true;
                    return Err(Error::new(
                        ErrorKind::QueueFull,
                        format!(
                            "{}.{}: the batch is full and {} sealed chunks wait to be sent (batch.sealed={}); the record was not taken: call kedge_poll and append it again",
                            self.key.database,
                            self.key.table,
                            st.sealed.len() + st.out,
                            self.sealed_max
                        ),
                    ));
                }
            }
        }
        // The clock is read for a batch's first record only: a clock_gettime per record was 4 % of kedge-send's CPU.
        let at = st.filling.first_at().unwrap_or_else(now);
        st.filling.push(self.format, record, at);
        // Counted with the lock held: the sender, which counts a record settled only after taking its batch
        // under this lock, can never count it before it is counted here.
        st.appended_records += 1;
        st.appended_bytes += record.len() as u64;
        Ok(Appended { sealed })
    }

    /// Records and bytes taken by `append` so far.
    pub fn appended(&self) -> (u64, u64) {
        let st = self.lock();
        (st.appended_records, st.appended_bytes)
    }

    /// A free buffer within the lane's bound of `1 + batch.sealed`: a spare one, or a new one while fewer exist.
    fn acquire(&self, st: &mut State) -> Option<Batch> {
        if let Some(b) = st.spare.pop() {
            return Some(b);
        }
        (st.buffers < 1 + self.sealed_max).then(|| {
            st.buffers += 1;
            Batch::with_capacity(self.capacity)
        })
    }

    /// Hands the sender the next chunk: the oldest sealed one, else the filling batch when `force` or when it is
    /// older than `max_age`. The sender gives it back through the [`Taken`] guard; if it never does (a panic
    /// unwinds through the sender), the guard puts the chunk back at the head of the lane.
    pub fn take(&self, now: Instant, max_age: Duration, force: bool) -> Option<Taken<'_>> {
        self.take_batch(now, max_age, force).map(|b| Taken {
            lane: self,
            batch: Some(b),
        })
    }

    fn take_batch(&self, now: Instant, max_age: Duration, force: bool) -> Option<Batch> {
        let mut st = self.lock();
        if let Some(b) = st.sealed.pop_front() {
            st.out += 1;
            return Some(b);
        }
        let due = st.filling.first_at().is_some_and(|first| {
            force || st.full || now.saturating_duration_since(first) >= max_age
        });
        if !due {
            return None;
        }
        // Its place is taken by a free buffer, or by a placeholder (no memory) that refuses records until a
        // buffer comes back: with batch.sealed=0 a lane never holds more than one.
        let fresh = self
            .acquire(&mut st)
            .unwrap_or_else(|| Batch::with_capacity(0));
        let b = std::mem::replace(&mut st.filling, fresh);
        st.out += 1;
        st.full = false;
        Some(b)
    }

    /// Gives back a batch from [`Lane::take`].
    fn give_back(&self, mut batch: Batch, what: Return) {
        let mut st = self.lock();
        st.out = st.out.saturating_sub(1);
        match what {
            Return::Keep if !batch.is_empty() => st.sealed.push_front(batch),
            _ => {
                batch.clear();
                if st.filling.capacity() == 0 {
                    st.filling = batch;
                } else {
                    st.spare.push(batch);
                }
            }
        }
    }

    /// When the sender has work here next: now for a sealed chunk or a full batch, else when the filling batch
    /// comes of age.
    pub fn due_at(&self, now: Instant, max_age: Duration) -> Option<Instant> {
        let st = self.lock();
        if !st.sealed.is_empty() || (st.full && !st.filling.is_empty()) {
            return Some(now);
        }
        st.filling.first_at().map(|first| first + max_age)
    }

    /// Records waiting in the lane (filling and sealed; not those the sender holds).
    pub fn records(&self) -> u64 {
        let st = self.lock();
        st.filling.records() + st.sealed.iter().map(Batch::records).sum::<u64>()
    }

    /// Buffers allocated so far (for the memory bound's test).
    pub fn buffers(&self) -> usize {
        self.lock().buffers
    }
}

/// A batch the sender took from a lane: it goes back exactly once, by [`Taken::give_back`] or, if the sender
/// never gets there (a panic), by `Drop`, which keeps it (same chunk id) at the head of the lane.
pub struct Taken<'l> {
    lane: &'l Lane,
    batch: Option<Batch>,
}

impl Taken<'_> {
    /// Gives the batch back: freed (delivered, refused or durable) or kept for another try.
    pub fn give_back(mut self, what: Return) {
        if let Some(b) = self.batch.take() {
            self.lane.give_back(b, what);
        }
    }
}

impl std::ops::Deref for Taken<'_> {
    type Target = Batch;
    fn deref(&self) -> &Batch {
        self.batch
            .as_ref()
            .expect("a Taken holds its batch until given back")
    }
}

impl std::ops::DerefMut for Taken<'_> {
    fn deref_mut(&mut self) -> &mut Batch {
        self.batch
            .as_mut()
            .expect("a Taken holds its batch until given back")
    }
}

impl Drop for Taken<'_> {
    fn drop(&mut self) {
        if let Some(b) = self.batch.take() {
            self.lane.give_back(b, Return::Keep);
        }
    }
}

/// The client's lanes: a fixed table of `destinations.max` slots, filled as destinations are added. Reading a
/// lane takes no lock at all; adding one takes a lock only other adds use.
pub struct Lanes {
    slots: Box<[OnceLock<Lane>]>,
    count: AtomicUsize,
    adding: Mutex<()>,
}

impl Lanes {
    /// Room for `max` lanes.
    pub fn new(max: usize) -> Lanes {
        Lanes {
            slots: (0..max).map(|_| OnceLock::new()).collect(),
            count: AtomicUsize::new(0),
            adding: Mutex::new(()),
        }
    }

    /// The lane of a destination id.
    pub fn get(&self, id: u32) -> Option<&Lane> {
        let i = id as usize;
        if i >= self.count.load(Ordering::Acquire) {
            return None;
        }
        self.slots.get(i)?.get()
    }

    /// Every lane, in the order added.
    pub fn iter(&self) -> impl Iterator<Item = &Lane> + '_ {
        let n = self.count.load(Ordering::Acquire);
        self.slots[..n].iter().filter_map(OnceLock::get)
    }

    /// The lane of a key, if one was added.
    pub fn find(&self, key: &DestKey) -> Option<&Lane> {
        self.iter().find(|l| *l.key == *key)
    }

    /// Adds a lane built by `make` with the next id. `TooManyDestinations` when the table is full, or the error
    /// of `check` (run with the lock held, to refuse duplicates).
    pub fn add(
        &self,
        check: impl FnOnce(&Lanes) -> Result<(), Error>,
        make: impl FnOnce(u32) -> Lane,
    ) -> Result<u32, Error> {
        let _g = self.adding.lock().unwrap_or_else(|p| p.into_inner());
        check(self)?;
        let n = self.count.load(Ordering::Acquire);
        let Some(slot) = self.slots.get(n) else {
            return Err(Error::new(
                ErrorKind::TooManyDestinations,
                format!(
                    "this client already has destinations.max={} destinations",
                    self.slots.len()
                ),
            ));
        };
        let _ = slot.set(make(n as u32));
        self.count.store(n + 1, Ordering::Release);
        Ok(n as u32)
    }

    /// How many lanes there are.
    pub fn len(&self) -> usize {
        self.count.load(Ordering::Acquire)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lane(cap: usize, sealed: usize) -> Lane {
        let key = DestKey {
            database: "db".into(),
            table: "t".into(),
            format: "csv".into(),
            mapping: None,
        };
        Lane::new(0, key, Format::Csv, cap, sealed)
    }

    const MS: fn(u64) -> Duration = Duration::from_millis;

    #[test]
    fn append_seals_full_batches_until_the_slots_are_taken() {
        let l = lane(8, 2);
        let t = Instant::now();
        // "abc\n" is 4 bytes: two per batch.
        for _ in 0..2 {
            assert_eq!(l.append(b"abc", || t).unwrap(), Appended { sealed: false });
        }
        assert_eq!(l.append(b"abc", || t).unwrap(), Appended { sealed: true });
        l.append(b"abc", || t).unwrap();
        assert_eq!(l.append(b"abc", || t).unwrap(), Appended { sealed: true });
        l.append(b"abc", || t).unwrap();
        let e = l.append(b"abc", || t).unwrap_err();
        assert_eq!(e.kind, ErrorKind::QueueFull);
        assert_eq!(l.records(), 6);
        assert_eq!(
            l.appended(),
            (6, 18),
            "counted as taken, the refused one not"
        );
        assert_eq!(l.buffers(), 3);
        // The sender takes the oldest; one slot frees only when it gives it back.
        let b = l.take(t, MS(1000), false).unwrap();
        assert_eq!(b.records(), 2);
        assert_eq!(
            l.append(b"abc", || t).unwrap_err().kind,
            ErrorKind::QueueFull
        );
        b.give_back(Return::Free);
        assert_eq!(l.append(b"abc", || t).unwrap(), Appended { sealed: true });
        assert_eq!(
            l.buffers(),
            3,
            "buffers are reused, never more than 1 + sealed"
        );
    }

    #[test]
    fn take_is_oldest_first_and_a_kept_chunk_goes_back_to_the_head() {
        let l = lane(8, 2);
        let t = Instant::now();
        for r in [&b"a1"[..], b"a2", b"b1", b"b2", b"c1"] {
            l.append(r, || t).unwrap();
        }
        let first = l.take(t, MS(1000), false).unwrap();
        assert_eq!(first.bytes(), b"a1\na2\n");
        first.give_back(Return::Keep);
        let again = l.take(t, MS(1000), false).unwrap();
        assert_eq!(again.bytes(), b"a1\na2\n");
        again.give_back(Return::Free);
        let b = l.take(t, MS(1000), false).unwrap();
        assert_eq!(b.bytes(), b"b1\nb2\n");
        b.give_back(Return::Free);
        // The filling batch goes when it is old enough or when forced, and only within the lane's buffers.
        assert!(l.take(t, MS(1000), false).is_none());
        assert!(l.take(t + MS(999), MS(1000), false).is_none());
        assert_eq!(l.due_at(t, MS(1000)), Some(t + MS(1000)));
        let c = l.take(t + MS(1000), MS(1000), false).unwrap();
        assert_eq!(c.bytes(), b"c1\n");
        assert_eq!(l.due_at(t, MS(1000)), None);
        assert!(l.take(t, MS(0), true).is_none(), "nothing left");
    }

    #[test]
    fn the_sender_holding_every_buffer_leaves_a_placeholder_that_refuses_records() {
        let l = lane(8, 1);
        let t = Instant::now();
        l.append(b"a1", || t).unwrap();
        let a = l.take(t, MS(0), true).unwrap();
        l.append(b"b1", || t).unwrap();
        let b = l.take(t, MS(0), true).expect("the filling batch goes too");
        assert_eq!(b.bytes(), b"b1\n");
        assert_eq!(l.buffers(), 2, "no third buffer");
        assert_eq!(
            l.append(b"c1", || t).unwrap_err().kind,
            ErrorKind::QueueFull
        );
        a.give_back(Return::Free);
        l.append(b"c1", || t).unwrap();
        b.give_back(Return::Free);
        assert_eq!(l.take(t, MS(0), true).unwrap().bytes(), b"c1\n");
        assert_eq!(l.buffers(), 2);
    }

    #[test]
    fn with_no_sealed_slot_a_full_batch_waits_for_the_sender_in_its_single_buffer() {
        let l = lane(8, 0);
        let t = Instant::now();
        l.append(b"abc", || t).unwrap();
        l.append(b"abc", || t).unwrap();
        assert_eq!(l.due_at(t, MS(1000)), Some(t + MS(1000)));
        assert_eq!(
            l.append(b"abc", || t).unwrap_err().kind,
            ErrorKind::QueueFull
        );
        assert_eq!(
            l.due_at(t, MS(1000)),
            Some(t),
            "a full batch is due at once"
        );
        let b = l.take(t, MS(1000), false).expect("due because full");
        assert_eq!(
            l.append(b"abc", || t).unwrap_err().kind,
            ErrorKind::QueueFull,
            "its buffer is out"
        );
        b.give_back(Return::Free);
        l.append(b"abc", || t).unwrap();
        assert_eq!(l.buffers(), 1, "one buffer, ever");
        // Kept (a failed send): it is sent again before anything new is taken.
        let b = l.take(t, MS(0), true).unwrap();
        b.give_back(Return::Keep);
        assert_eq!(
            l.append(b"abc", || t).unwrap_err().kind,
            ErrorKind::QueueFull
        );
        let again = l.take(t, MS(1000), false).unwrap();
        assert_eq!(again.bytes(), b"abc\n");
        again.give_back(Return::Free);
        l.append(b"abc", || t).unwrap();
        assert_eq!(l.buffers(), 1);
    }

    #[test]
    fn bad_records_are_refused_before_the_lock() {
        let l = lane(8, 1);
        let t = Instant::now();
        assert_eq!(
            l.append(b"", || t).unwrap_err().kind,
            ErrorKind::InvalidRecord
        );
        assert_eq!(
            l.append(b"123456789", || t).unwrap_err().kind,
            ErrorKind::RecordTooLarge
        );
        assert_eq!(l.records(), 0);
    }

    #[test]
    fn lanes_are_added_up_to_the_table_and_read_without_locks() {
        let lanes = Lanes::new(2);
        let key = |t: &str| DestKey {
            database: "db".into(),
            table: t.into(),
            format: "csv".into(),
            mapping: None,
        };
        for t in ["a", "b"] {
            let k = key(t);
            lanes
                .add(|_| Ok(()), |id| Lane::new(id, k, Format::Csv, 8, 1))
                .unwrap();
        }
        let e = lanes
            .add(|_| Ok(()), |id| Lane::new(id, key("c"), Format::Csv, 8, 1))
            .unwrap_err();
        assert_eq!(e.kind, ErrorKind::TooManyDestinations);
        assert_eq!(lanes.get(1).unwrap().key.table, "b");
        assert!(lanes.get(2).is_none());
        assert_eq!(lanes.find(&key("a")).unwrap().id, 0);
        assert_eq!(lanes.iter().count(), 2);
    }
}

#[cfg(test)]
mod panic_tests {
    use super::*;

    #[test]
    fn a_batch_the_sender_drops_without_giving_back_returns_to_the_head_of_the_lane() {
        let key = DestKey {
            database: "db".into(),
            table: "t".into(),
            format: "csv".into(),
            mapping: None,
        };
        let l = Lane::new(0, key, Format::Csv, 8, 1);
        let t = Instant::now();
        l.append(b"a1", || t).unwrap();
        let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            let mut b = l.take(t, Duration::ZERO, true).unwrap();
            b.chunk_id = Some([7; 16]);
            panic!("a bug in the sender");
        }));
        assert!(r.is_err());
        let again = l.take(t, Duration::ZERO, true).expect("the batch is back");
        assert_eq!(again.bytes(), b"a1\n");
        assert_eq!(again.chunk_id, Some([7; 16]), "same chunk id");
        again.give_back(Return::Free);
        // The lane is not wedged: its slot is free again.
        l.append(b"b1", || t).unwrap();
        assert!(l.take(t, Duration::ZERO, true).is_some());
    }
}
