//! Backoff between attempts: a pure function of the attempt number, the bounds and a random draw, so tests can pin
//! it and the client can decide how long it may still wait before it even sleeps.

use std::time::Duration;

/// Exponential backoff with full jitter: a uniform delay in `[0, min(max, base * 2^attempt)]`. `attempt` counts
/// failures so far (0 after the first). `random` is any uniformly random `u32`.
pub fn backoff_delay(attempt: u32, base: Duration, max: Duration, random: u32) -> Duration {
    let ceiling = exp_ceiling(attempt, base, max);
    let ms = ceiling.as_millis() as u64;
    Duration::from_millis(((ms as u128 * (random as u128 + 1)) >> 32) as u64)
}

/// `min(max, base * 2^attempt)`, without overflow for any attempt count.
pub fn exp_ceiling(attempt: u32, base: Duration, max: Duration) -> Duration {
    let factor = 1u32.checked_shl(attempt.min(31)).unwrap_or(u32::MAX);
    base.checked_mul(factor).unwrap_or(max).min(max)
}

/// The delay to wait given what the server asked for: never shorter than its `Retry-After`, capped by `cap`
/// so that a server that lies cannot park the device for a day.
pub fn honour_retry_after(
    delay: Duration,
    retry_after: Option<Duration>,
    cap: Duration,
) -> Duration {
    match retry_after {
        Some(ra) => delay.max(ra).min(cap.max(delay)),
        None => delay,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: fn(u64) -> Duration = Duration::from_millis;

    #[test]
    fn delay_is_full_jitter_under_an_exponential_ceiling() {
        assert_eq!(backoff_delay(0, MS(100), MS(10_000), 0), MS(0));
        assert_eq!(backoff_delay(0, MS(100), MS(10_000), u32::MAX), MS(100));
        assert_eq!(backoff_delay(3, MS(100), MS(10_000), u32::MAX), MS(800));
        assert_eq!(backoff_delay(3, MS(100), MS(10_000), u32::MAX / 2), MS(400));
        assert_eq!(backoff_delay(20, MS(100), MS(10_000), u32::MAX), MS(10_000));
        assert_eq!(
            backoff_delay(u32::MAX, Duration::from_secs(3600), Duration::MAX, u32::MAX),
            Duration::MAX.min(Duration::from_secs(3600) * (1 << 31))
        );
    }

    #[test]
    fn retry_after_lengthens_but_is_capped() {
        assert_eq!(
            honour_retry_after(MS(50), Some(MS(1000)), MS(60_000)),
            MS(1000)
        );
        assert_eq!(
            honour_retry_after(MS(50), Some(Duration::from_secs(86400)), MS(60_000)),
            MS(60_000)
        );
        assert_eq!(honour_retry_after(MS(500), None, MS(60_000)), MS(500));
        assert_eq!(
            honour_retry_after(MS(5000), Some(MS(10)), MS(60_000)),
            MS(5000)
        );
    }
}
