//! The sender's gate: one thread at a time does the network and flash work of a client (`poll`, `flush`,
//! `flush_to_spool`, `free`), while `append` never comes near it. A thread that already holds it (a callback
//! calling back into its client) gets `ReentrantCall` instead of a deadlock.

use std::sync::{Condvar, Mutex};
use std::time::{Duration, Instant};

use crate::error::{Error, ErrorKind};

thread_local! {
    static ME: u8 = const { 0 };
}

/// An id of the calling thread: the address of a thread-local, unique among live threads.
fn me() -> usize {
    ME.with(|m| m as *const u8 as usize)
}

/// How long `enter` may wait for another thread's send.
#[derive(Clone, Copy, Debug)]
pub enum Wait {
    /// Not at all.
    No,
    /// Up to this long.
    For(Duration),
    /// As long as it takes.
    Forever,
}

/// See the module docs.
pub struct Gate {
    owner: Mutex<usize>,
    freed: Condvar,
}

/// Holding the gate; dropping it lets the next thread in.
pub struct Held<'a> {
    gate: &'a Gate,
}

impl Drop for Held<'_> {
    fn drop(&mut self) {
        *self.gate.owner.lock().unwrap_or_else(|p| p.into_inner()) = 0;
        self.gate.freed.notify_one();
    }
}

impl Gate {
    /// A free gate.
    pub fn new() -> Gate {
        Gate {
            owner: Mutex::new(0),
            freed: Condvar::new(),
        }
    }

    /// Enters, waiting as allowed. `Ok(None)`: another thread is sending and the wait ran out.
    pub fn enter(&self, wait: Wait) -> Result<Option<Held<'_>>, Error> {
        let me = me();
        let mut owner = self.owner.lock().unwrap_or_else(|p| p.into_inner());
        if *owner == me {
            return Err(Error::new(
                ErrorKind::ReentrantCall,
                "a client function that sends was called from inside one of that client's callbacks: callbacks may append and read stats, not poll, flush or free",
            ));
        }
        let until = match wait {
            Wait::For(d) => Instant::now().checked_add(d),
            _ => None,
        };
        while *owner != 0 {
            owner = match wait {
                Wait::No => return Ok(None),
                Wait::Forever => self.freed.wait(owner).unwrap_or_else(|p| p.into_inner()),
                Wait::For(_) => {
                    let left = match until {
                        Some(u) => u.saturating_duration_since(Instant::now()),
                        None => Duration::from_secs(3600),
                    };
                    if left.is_zero() {
                        return Ok(None);
                    }
                    self.freed
                        .wait_timeout(owner, left)
                        .unwrap_or_else(|p| p.into_inner())
                        .0
                }
            };
        }
        *owner = me;
        Ok(Some(Held { gate: self }))
    }

    /// Whether the calling thread holds the gate.
    #[cfg(test)]
    pub fn held_by_me(&self) -> bool {
        *self.owner.lock().unwrap_or_else(|p| p.into_inner()) == me()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[test]
    fn one_holder_reentry_refused_others_wait_or_give_up() {
        let g = Arc::new(Gate::new());
        let held = g.enter(Wait::No).unwrap().unwrap();
        assert!(g.held_by_me());
        assert_eq!(
            g.enter(Wait::Forever).err().unwrap().kind,
            ErrorKind::ReentrantCall
        );
        let g2 = g.clone();
        let (tx, rx) = std::sync::mpsc::channel();
        let other = std::thread::spawn(move || {
            let none = g2.enter(Wait::No).unwrap().is_none();
            let timed_out = g2
                .enter(Wait::For(Duration::from_millis(1)))
                .unwrap()
                .is_none();
            tx.send((none, timed_out)).unwrap();
            g2.enter(Wait::Forever).unwrap().is_some()
        });
        assert_eq!(rx.recv().unwrap(), (true, true));
        drop(held);
        assert!(other.join().unwrap());
        assert!(!g.held_by_me());
        assert!(g.enter(Wait::No).unwrap().is_some());
    }
}
