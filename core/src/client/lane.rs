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

use crate::batch::{find_line, validate_line, validate_record, Batch};
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

/// Records [`Lane::append_lines`] checks before it takes the lane's lock once for all of them.
pub const LINES_PER_LOCK: usize = 64;

/// What one [`Lane::append_lines`] took: whole lines only.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LinesTaken {
    /// Bytes of the buffer taken (records and skipped empty lines, with their newlines). The rest begins with
    /// the record not taken (after an error), with an incomplete line, or, after `max_records` records, with
    /// whatever followed the last one taken (empty lines included: they are looked at on the next call).
    pub consumed: usize,
    /// Records taken.
    pub records: u64,
    /// Lines taken, skipped empty lines and lines inside quoted CSV fields included.
    pub lines: u64,
}

/// A checked record of [`Lane::append_lines`] waiting for the lock.
#[derive(Clone, Copy, Default)]
struct Line {
    start: usize,
    /// The end of what goes into the batch: past the newline, or before a `\r` (the batch adds the newline).
    framed_end: usize,
    /// Its length without `\r` and newline.
    len: usize,
    /// Empty lines skipped before it.
    skipped: u64,
    /// Its lines.
    lines: u64,
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
    pub fn append(&self, record: &[u8], now: impl Fn() -> Instant) -> Result<Appended, Error> {
        validate_record(self.format, record, self.capacity, self.json_check)?;
        let mut st = self.lock();
        self.push_locked(&mut st, record, record.len(), &mut &now)
    }

    /// Takes the newline-ended records of `buf` (see [`LinesTaken`]), at most `max_records` of them: each line
    /// a record (for CSV-like formats a newline inside a quoted field belongs to its record), a `\r` before
    /// the newline dropped, empty lines skipped. Stops before an incomplete last line, after `max_records`, or
    /// at the first record not taken, whose error comes back (`QueueFull`: append it again after a poll;
    /// `InvalidRecord`, `RecordTooLarge`: it never will be taken as it is). The lock is taken once per
    /// [`LINES_PER_LOCK`] records, after they were checked: never while a record is checked.
    pub fn append_lines(
        &self,
        buf: &[u8],
        max_records: u64,
        now: impl Fn() -> Instant,
    ) -> (LinesTaken, Result<(), Error>) {
        let mut t = LinesTaken::default();
        if self.format.one_record_per_request() {
            return (
                t,
                Err(Error::new(
                    ErrorKind::InvalidArgument,
                    format!(
                        "{} records are whole documents, not lines: append them one at a time",
                        self.format.wire_name()
                    ),
                )),
            );
        }
        // Checked records waiting for the lock.
        let mut group = [Line::default(); LINES_PER_LOCK];
        let mut at = 0usize; // the end of the last line looked at
        loop {
            let mut n = 0;
            let mut stop = None;
            let mut skipped = 0u64; // empty lines since the last record
            while n < LINES_PER_LOCK && t.records + (n as u64) < max_records {
                let Some(end) = find_line(self.format, &buf[at..]) else {
                    break;
                };
                let nl = at + end.newline;
                let mut line = &buf[at..nl];
                let cr = line.last() == Some(&b'\r');
                if cr {
                    line = &line[..line.len() - 1];
                }
                if line.is_empty() {
                    at = nl + 1;
                    skipped += 1;
                    continue;
                }
                if let Err(e) =
                    validate_line(self.format, line, self.capacity, self.json_check, end.ascii)
                {
                    stop = Some(e);
                    break;
                }
                group[n] = Line {
                    start: at,
                    // Without a \r the record goes into the batch with its own newline: one copy.
                    framed_end: if cr { nl - 1 } else { nl + 1 },
                    len: line.len(),
                    skipped,
                    lines: 1 + end.inner_lines,
                };
                skipped = 0;
                n += 1;
                at = nl + 1;
            }
            if n > 0 {
                let mut st = self.lock();
                for l in &group[..n] {
                    t.lines += l.skipped;
                    if let Err(e) =
                        self.push_locked(&mut st, &buf[l.start..l.framed_end], l.len, &mut &now)
                    {
                        t.consumed = l.start;
                        return (t, Err(e));
                    }
                    t.records += 1;
                    t.lines += l.lines;
                }
            }
            // What follows the group's last record: empty lines, then the end, the stop, or the next group.
            t.lines += skipped;
            t.consumed = at;
            if let Some(e) = stop {
                return (t, Err(e));
            }
            if n < LINES_PER_LOCK || t.records >= max_records {
                return (t, Ok(()));
            }
        }
    }

    /// Puts a checked record (`len` bytes of it counted, its newline aside) into the filling batch, sealing the
    /// full one first when it does not fit. `QueueFull` when no buffer is free.
    fn push_locked(
        &self,
        st: &mut State,
        record: &[u8],
        len: usize,
        now: &mut impl FnMut() -> Instant,
    ) -> Result<Appended, Error> {
        let mut sealed = false;
        if !st.filling.fits(self.format, record) {
            // A buffer for the record: the filling one is full (seal it) or with the sender (a placeholder).
            let placeholder = st.filling.capacity() == 0;
            match (placeholder || !st.filling.is_empty())
                .then(|| self.acquire(st))
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
        let at = st.filling.first_at().unwrap_or_else(&mut *now);
        st.filling.push(self.format, record, at);
        // Counted with the lock held: the sender, which counts a record settled only after taking its batch
        // under this lock, can never count it before it is counted here.
        st.appended_records += 1;
        st.appended_bytes += len as u64;
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

    fn lane_of(format: Format, cap: usize, sealed: usize) -> Lane {
        let key = DestKey {
            database: "db".into(),
            table: "t".into(),
            format: format.wire_name().into(),
            mapping: None,
        };
        Lane::new(0, key, format, cap, sealed)
    }

    /// Every batch's bytes, oldest first, and the records in them.
    fn drain(l: &Lane, t: Instant) -> (Vec<u8>, u64) {
        let (mut bytes, mut records) = (Vec::new(), 0);
        while let Some(b) = l.take(t, Duration::ZERO, true) {
            bytes.extend_from_slice(b.bytes());
            records += b.records();
            b.give_back(Return::Free);
        }
        (bytes, records)
    }

    #[test]
    fn append_lines_takes_what_append_takes_line_by_line() {
        let t = Instant::now();
        let mut buf = Vec::new();
        for i in 0..300u32 {
            match i % 7 {
                0 => buf.extend_from_slice(b"\n"),
                1 => buf.extend_from_slice(format!("{{\"i\":{i},\"s\":\"é\"}}\r\n").as_bytes()),
                2 => buf.extend_from_slice(b"\r\n"),
                _ => buf.extend_from_slice(format!("{{\"i\":{i},\"v\":[1,2,{{}}]}}\n").as_bytes()),
            }
        }
        buf.extend_from_slice(b"{\"partial\":"); // no newline: not taken
        let bulk = lane_of(Format::Json, 4096, 64);
        let (taken, r) = bulk.append_lines(&buf, u64::MAX, || t);
        r.unwrap();
        let one = lane_of(Format::Json, 4096, 64);
        let mut records = 0;
        for line in buf.split(|&b| b == b'\n').take(300) {
            let line = line.strip_suffix(b"\r").unwrap_or(line);
            if !line.is_empty() {
                one.append(line, || t).unwrap();
                records += 1;
            }
        }
        assert_eq!(
            taken,
            LinesTaken {
                consumed: buf.len() - b"{\"partial\":".len(),
                records,
                lines: 300
            }
        );
        assert_eq!(bulk.appended(), one.appended());
        assert!(bulk.buffers() > 1, "batches were sealed on the way");
        assert_eq!(drain(&bulk, t), drain(&one, t));
    }

    #[test]
    fn append_lines_stops_before_a_bad_record_and_after_max_records() {
        let t = Instant::now();
        let buf = b"{\"a\":1}\n\n{\"b\":2}\n{\"c\":\n{\"d\":4}\n";
        let l = lane_of(Format::Json, 4096, 4);
        let (taken, r) = l.append_lines(buf, u64::MAX, || t);
        assert_eq!(r.unwrap_err().kind, ErrorKind::InvalidRecord);
        let bad = buf.windows(6).position(|w| w == b"{\"c\":\n").unwrap();
        assert_eq!(
            taken,
            LinesTaken {
                consumed: bad,
                records: 2,
                lines: 3
            }
        );
        // Past the bad line, the rest goes on; max_records stops after one, empty lines and all.
        let rest = &buf[bad + 6..];
        let (taken, r) = l.append_lines(rest, 1, || t);
        r.unwrap();
        assert_eq!(
            (taken.consumed, taken.records, taken.lines),
            (rest.len(), 1, 1)
        );
        assert_eq!(
            l.append_lines(b"", 1, || t),
            (LinesTaken::default(), Ok(()))
        );
        assert_eq!(drain(&l, t).0, b"{\"a\":1}\n{\"b\":2}\n{\"d\":4}\n");
        // A line too long for a batch, and a line that is not UTF-8, are refused where they begin.
        let l = lane_of(Format::Csv, 8, 4);
        let (taken, r) = l.append_lines(b"a\n123456789\nb\n", u64::MAX, || t);
        assert_eq!(r.unwrap_err().kind, ErrorKind::RecordTooLarge);
        assert_eq!((taken.consumed, taken.records), (2, 1));
        let (taken, r) = l.append_lines(b"x,\xc3\xa9\nx,\xff\n", u64::MAX, || t);
        assert_eq!(r.unwrap_err().kind, ErrorKind::InvalidRecord);
        assert_eq!((taken.consumed, taken.records), (5, 1));
        // Records past a group of LINES_PER_LOCK are taken the same way, and max_records holds across groups.
        let l = lane_of(Format::Csv, 1 << 16, 0);
        let many = "r,1\n".repeat(3 * LINES_PER_LOCK);
        let (taken, r) = l.append_lines(many.as_bytes(), 2 * LINES_PER_LOCK as u64 + 5, || t);
        r.unwrap();
        assert_eq!(taken.records, 2 * LINES_PER_LOCK as u64 + 5);
        assert_eq!(taken.consumed, 4 * taken.records as usize);
        // After max_records the empty lines that follow are left for the next call, which counts them.
        let l = lane_of(Format::Csv, 1 << 16, 0);
        let buf = b"a,1\n\n\r\nb,2\n";
        let (taken, r) = l.append_lines(buf, 1, || t);
        r.unwrap();
        assert_eq!((taken.consumed, taken.records, taken.lines), (4, 1, 1));
        let (taken, r) = l.append_lines(&buf[4..], 1, || t);
        r.unwrap();
        assert_eq!((taken.consumed, taken.records, taken.lines), (7, 1, 3));
    }

    #[test]
    fn append_lines_stops_at_a_full_lane_and_resumes_where_it_stopped() {
        let t = Instant::now();
        // "abc\n" is 4 bytes: two per batch, one batch sealed at most: 4 records fit.
        let l = lane_of(Format::Csv, 8, 1);
        let buf = b"abc\nabd\r\nabe\nabf\n\nabg\nabh\n";
        let (taken, r) = l.append_lines(buf, u64::MAX, || t);
        assert_eq!(r.unwrap_err().kind, ErrorKind::QueueFull);
        let at = buf.windows(3).position(|w| w == b"abg").unwrap();
        assert_eq!((taken.consumed, taken.records, taken.lines), (at, 4, 5));
        assert_eq!(l.appended(), (4, 12));
        let b = l.take(t, Duration::ZERO, false).unwrap();
        assert_eq!(b.bytes(), b"abc\nabd\n");
        b.give_back(Return::Free);
        let (taken, r) = l.append_lines(&buf[at..], u64::MAX, || t);
        r.unwrap();
        assert_eq!(taken.records, 2);
        assert_eq!(drain(&l, t), (b"abe\nabf\nabg\nabh\n".to_vec(), 4));
    }

    #[test]
    fn append_lines_keeps_a_quoted_csv_newline_in_its_record_and_refuses_documents() {
        let t = Instant::now();
        let l = lane_of(Format::Csv, 256, 1);
        let buf = b"a,\"one\ntwo\"\"\nthree\"\nb,2\nc,\"open\n";
        let (taken, r) = l.append_lines(buf, u64::MAX, || t);
        r.unwrap();
        assert_eq!((taken.records, taken.lines), (2, 4));
        assert_eq!(
            &buf[taken.consumed..],
            b"c,\"open\n",
            "the open quote waits for more"
        );
        assert_eq!(drain(&l, t).0, &buf[..taken.consumed]);
        let l = lane_of(Format::Avro, 256, 1);
        assert_eq!(
            l.append_lines(b"x\n", u64::MAX, || t).1.unwrap_err().kind,
            ErrorKind::InvalidArgument
        );
    }
}
