//! Backoff between attempts, the one function every retry in the library uses (sends inside a call, a
//! destination's backoff between calls, token fetches): a pure function of the failure count, the bounds, a
//! random draw and the server's `Retry-After`, so tests can pin it and a caller can decide whether it may still
//! wait before it sleeps.

use std::time::Duration;

/// The bounds of one kind of retry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Backoff {
    /// The wait after the first failure (its upper bound: jitter takes up to half of it away).
    pub base: Duration,
    /// Cap of one wait before `Retry-After` is considered.
    pub max: Duration,
    /// Cap of a server's `Retry-After`, so that a server that lies cannot park the device for a day. Never
    /// shortens the computed wait.
    pub retry_after_cap: Duration,
}

impl Backoff {
    /// The wait after `failures` consecutive failures (1 after the first): a uniform draw in `[c/2, c]` with
    /// `c = min(max, base * 2^(failures-1))` (jitter spreads devices that failed together, the lower half keeps
    /// the growth), then lengthened to the server's `Retry-After`, at most `retry_after_cap`. `random` is any
    /// uniformly random `u32`. Zero failures wait nothing.
    pub fn delay(&self, failures: u32, random: u32, retry_after: Option<Duration>) -> Duration {
        if failures == 0 {
            return Duration::ZERO;
        }
        let ceiling = exp_ceiling(failures - 1, self.base, self.max);
        let half = ceiling / 2;
        let span = (ceiling - half).as_nanos();
        // (span * (r + 1)) >> 32 never exceeds span; u128 holds the product for any Duration.
        let extra = (span * (random as u128 + 1)) >> 32;
        let jittered = half + Duration::from_nanos(extra.min(u64::MAX as u128) as u64);
        match retry_after {
            Some(ra) => jittered.max(ra.min(self.retry_after_cap.max(jittered))),
            None => jittered,
        }
    }
}

/// `min(max, base * 2^attempt)`, without overflow for any attempt count.
fn exp_ceiling(attempt: u32, base: Duration, max: Duration) -> Duration {
    let factor = 1u32.checked_shl(attempt.min(31)).unwrap_or(u32::MAX);
    base.checked_mul(factor).unwrap_or(max).min(max)
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: fn(u64) -> Duration = Duration::from_millis;
    const B: Backoff = Backoff {
        base: Duration::from_millis(100),
        max: Duration::from_millis(10_000),
        retry_after_cap: Duration::from_millis(60_000),
    };

    #[test]
    fn delay_grows_with_jitter_in_the_upper_half() {
        assert_eq!(B.delay(0, u32::MAX, None), MS(0));
        assert_eq!(B.delay(1, 0, None), MS(50));
        assert_eq!(B.delay(1, u32::MAX, None), MS(100));
        assert_eq!(B.delay(4, u32::MAX, None), MS(800));
        assert_eq!(B.delay(4, 0, None), MS(400));
        assert_eq!(B.delay(30, u32::MAX, None), MS(10_000));
        let huge = Backoff {
            base: Duration::from_secs(3600),
            max: Duration::MAX,
            retry_after_cap: Duration::MAX,
        };
        assert!(huge.delay(u32::MAX, u32::MAX, Some(Duration::MAX)) >= Duration::from_secs(3600));
        for r in [0, 1, 12345, u32::MAX / 2, u32::MAX] {
            let d = B.delay(3, r, None);
            assert!(d >= MS(200) && d <= MS(400), "{d:?}");
        }
    }

    #[test]
    fn retry_after_lengthens_but_is_capped() {
        assert_eq!(B.delay(1, u32::MAX, Some(MS(1000))), MS(1000));
        assert_eq!(
            B.delay(1, u32::MAX, Some(Duration::from_secs(86400))),
            MS(60_000)
        );
        assert_eq!(B.delay(4, u32::MAX, Some(MS(10))), MS(800));
        let low_cap = Backoff {
            retry_after_cap: MS(10),
            ..B
        };
        // The cap never shortens the computed wait.
        assert_eq!(low_cap.delay(4, u32::MAX, Some(MS(5000))), MS(800));
    }
}
