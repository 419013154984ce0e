//! The token cache: one token, refreshed ahead of its expiry on the monotonic clock, shared by every thread of a
//! client. [`TokenCache::get`] is all the client calls.
//!
//! When to refresh (MSAL's rules, plus one for tests and short-lived tokens):
//! - at `refresh_in` when the issuer gave one;
//! - tokens shorter than 10 minutes: when a third of their life remains;
//! - managed identity tokens living 2 h or more: at half-life;
//! - otherwise when less than 5 minutes remain.
//!
//! A failed refresh while the token is still valid is not an error: the current token is returned and the failure
//! is kept for the client to log ([`TokenCache::take_warning`]). Only without a usable token does `get` retry
//! (bounded) and fail.

use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use ring::rand::SecureRandom;

use crate::clock::SharedClock;
use crate::error::{Error, ErrorKind};
use crate::retry::Backoff;

use super::metadata::{Cloud, CloudConfig};
use super::providers::{AccessToken, Lifetime, TokenSource};
use super::FetchContext;
use crate::secret::SecretString;

/// Refresh when less than this remains (MSAL).
const REFRESH_BEFORE: Duration = Duration::from_secs(5 * 60);
/// Below this lifetime, refresh when a third remains instead.
const SHORT_LIFETIME: Duration = Duration::from_secs(10 * 60);
/// Managed identity tokens at least this long are refreshed at half-life (MSAL).
const MI_HALF_LIFE_FROM: Duration = Duration::from_secs(2 * 3600);
/// A token of unknown lifetime (a callback that said 0) is asked for again after this.
const UNKNOWN_LIFETIME_REUSE: Duration = Duration::from_secs(60);
/// A forced refresh within this long of the last fetch returns that token: several requests failing with 401 at
/// once must not each fetch a new one.
const FORCE_DEBOUNCE: Duration = Duration::from_secs(1);
/// Most a token is treated as expired early, for clock skew between us and Kusto and time in flight.
const EXPIRY_MARGIN: Duration = Duration::from_secs(30);

/// How hard `get` tries when it has no usable token.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Attempts, the first included.
    pub max_attempts: u32,
    /// Delay before the second attempt (its upper bound); doubles, with jitter ([`Backoff::delay`]).
    pub base: Duration,
    /// Cap of one delay (also caps `Retry-After`).
    pub max_delay: Duration,
    /// Bound on all attempts and delays of one `get`.
    pub max_total: Duration,
    /// After a transient failure without a usable token, `get` repeats the error without asking for this long.
    pub hold_after_transient: Duration,
    /// After a refusal (bad credentials), `get` repeats the error without asking for this long: the identity
    /// provider must not be hammered with a secret that cannot work.
    pub hold_after_refusal: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            max_attempts: 3,
            base: Duration::from_millis(500),
            max_delay: Duration::from_secs(5),
            max_total: Duration::from_secs(30),
            hold_after_transient: Duration::from_secs(2),
            hold_after_refusal: Duration::from_secs(30),
        }
    }
}

/// When a token should be refreshed and when it stops being usable, on the monotonic clock.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RefreshPlan {
    /// Fetch a new one from here on; `None`: never (static token).
    pub refresh_at: Option<Instant>,
    /// Unusable from here on; `None`: no known end.
    pub expires_at: Option<Instant>,
}

impl RefreshPlan {
    /// The plan for a token fetched at `fetched_at`. A pure function of the token's lifetime, so that tests pin it.
    pub fn for_token(
        fetched_at: Instant,
        lifetime: Lifetime,
        refresh_in: Option<Duration>,
        managed_identity: bool,
    ) -> Self {
        match lifetime {
            Lifetime::Forever => RefreshPlan {
                refresh_at: None,
                expires_at: None,
            },
            Lifetime::Unknown => RefreshPlan {
                refresh_at: Some(fetched_at + UNKNOWN_LIFETIME_REUSE),
                expires_at: None,
            },
            Lifetime::For(life) => {
                let margin = EXPIRY_MARGIN.min(life / 10);
                let after = match refresh_in {
                    Some(r) if r < life => r,
                    _ if life < SHORT_LIFETIME => life * 2 / 3,
                    _ if managed_identity && life >= MI_HALF_LIFE_FROM => life / 2,
                    _ => life - REFRESH_BEFORE,
                };
                RefreshPlan {
                    refresh_at: Some(fetched_at + after),
                    expires_at: Some(fetched_at + life - margin),
                }
            }
        }
    }

    fn usable(&self, now: Instant) -> bool {
        self.expires_at.is_none_or(|e| now < e)
    }

    fn due(&self, now: Instant) -> bool {
        self.refresh_at.is_some_and(|r| now >= r)
    }
}

struct Cached {
    token: SecretString,
    fetched_at: Instant,
    plan: RefreshPlan,
}

#[derive(Default)]
struct State {
    cloud: Option<Cloud>,
    cached: Option<Cached>,
    /// No refresh attempt before this (after a failed refresh while the token was still valid).
    refresh_not_before: Option<Instant>,
    /// A failure repeated without asking until the instant.
    held: Option<(Instant, Error)>,
    /// A refresh failure that did not stop us, for the client's log.
    warning: Option<Error>,
    fetches: u64,
}

/// One token source and its current token. Thread-safe: the lock is held through a fetch, so concurrent callers
/// wait for one fetch instead of each starting their own.
pub struct TokenCache {
    source: Box<dyn TokenSource>,
    cloud_config: CloudConfig,
    retry: RetryPolicy,
    clock: SharedClock,
    state: Mutex<State>,
}

impl std::fmt::Debug for TokenCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenCache")
            .field("source", &self.source)
            .field("cloud", &self.cloud_config)
            .finish_non_exhaustive()
    }
}

impl TokenCache {
    /// A cache around `source`. `cloud` says where the authority and resource come from; `retry` bounds `get`;
    /// `clock` is read for every refresh decision and slept on between attempts (the client's clock, so that
    /// tests make time pass without waiting), and its wall time is what `expires_on` is measured against.
    pub fn new(
        source: Box<dyn TokenSource>,
        cloud: CloudConfig,
        retry: RetryPolicy,
        clock: SharedClock,
    ) -> Self {
        TokenCache {
            source,
            cloud_config: cloud,
            retry,
            clock,
            state: Mutex::new(State::default()),
        }
    }

    /// False when a new fetch cannot give a different token (a static token): a 401 will not heal by itself.
    pub fn can_refresh(&self) -> bool {
        self.source.can_refresh()
    }

    /// The source's name for messages ("client secret", "managed identity (IMDS)").
    pub fn source_name(&self) -> &'static str {
        self.source.name()
    }

    /// A refresh failure that `get` rode out with the still-valid token, once: the client logs it as a warning.
    pub fn take_warning(&self) -> Option<Error> {
        self.lock().warning.take()
    }

    /// How many fetches the source was asked for so far (for stats and tests).
    pub fn fetch_count(&self) -> u64 {
        self.lock().fetches
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic in another thread mid-fetch leaves the state consistent (every field is written whole).
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The token to send now. `force` after a 401 from Kusto: a new token is fetched unless one was fetched
    /// within the last second. Blocks for at most about `retry.max_total` plus one request when it has to fetch.
    pub fn get(&self, agent: &ureq::Agent, force: bool) -> Result<SecretString, Error> {
        let mut st = self.lock();
        // Read after the lock: a caller that waited for another's fetch judges the token by the time it got it.
        let now = self.clock.now();
        if let Some(c) = &st.cached {
            let fresh = force && now.saturating_duration_since(c.fetched_at) < FORCE_DEBOUNCE;
            if fresh || !self.source.can_refresh() {
                return Ok(c.token.clone());
            }
            let usable = c.plan.usable(now);
            let may_try = st.refresh_not_before.is_none_or(|t| now >= t);
            if !force && usable && (!c.plan.due(now) || !may_try) {
                return Ok(c.token.clone());
            }
            if !force && usable {
                // Refresh ahead: one attempt and no sleeping, because the current token still works.
                return Ok(match self.fetch_once(&mut st, agent, now) {
                    Ok(t) => t,
                    Err(e) => {
                        let c = st.cached.as_ref().expect("cached token checked above");
                        let (token, expires_at) = (c.token.clone(), c.plan.expires_at);
                        let left = expires_at.map(|x| x.saturating_duration_since(now));
                        let wait = left
                            .map(|l| {
                                (l / 10).clamp(Duration::from_millis(500), Duration::from_secs(60))
                            })
                            .unwrap_or(Duration::from_secs(60));
                        st.refresh_not_before = Some(now + wait);
                        let valid = left.map_or("no known expiry".to_owned(), |l| {
                            format!("valid for {} s more", l.as_secs())
                        });
                        st.warning = Some(Error::new(
                            e.kind,
                            format!("refreshing the token ({}) failed, still using the current one ({valid}): {}", self.source.name(), e.message),
                        ));
                        token
                    }
                });
            }
        }
        if let Some((until, e)) = &st.held {
            if now < *until {
                return Err(e.clone());
            }
        }
        st.held = None;
        match self.fetch_with_retry(&mut st, agent, now) {
            Ok(t) => Ok(t),
            Err(e) => {
                let hold = if e.kind == ErrorKind::TransientFailure {
                    self.retry.hold_after_transient
                } else {
                    self.retry.hold_after_refusal
                };
                // From when the retries gave up: a hold shorter than the retries would otherwise be void.
                st.held = Some((self.clock.now() + hold, e.clone()));
                Err(e)
            }
        }
    }

    /// One fetch; on success the token is cached with its plan.
    fn fetch_once(
        &self,
        st: &mut State,
        agent: &ureq::Agent,
        now: Instant,
    ) -> Result<SecretString, Error> {
        self.attempt(st, agent, now).map_err(|(e, _)| e)
    }

    fn attempt(
        &self,
        st: &mut State,
        agent: &ureq::Agent,
        now: Instant,
    ) -> Result<SecretString, (Error, Option<Duration>)> {
        if st.cloud.is_none() {
            st.cloud = Some(if self.source.needs_cloud() {
                self.cloud_config.resolve(agent).map_err(|e| (e, None))?
            } else {
                self.cloud_config.without_metadata()
            });
        }
        let cloud = st.cloud.as_ref().expect("resolved above");
        st.fetches += 1;
        let ctx = FetchContext {
            agent,
            cloud,
            clock: &*self.clock,
        };
        let t: AccessToken = self
            .source
            .fetch(&ctx)
            .map_err(|f| (f.error, f.retry_after))?;
        // Planned from when the request started: the token's lifetime began no earlier than that.
        let plan = RefreshPlan::for_token(now, t.lifetime, t.refresh_in, t.managed_identity);
        let token = t.token.clone();
        st.cached = Some(Cached {
            token: t.token,
            fetched_at: now,
            plan,
        });
        st.refresh_not_before = None;
        Ok(token)
    }

    fn fetch_with_retry(
        &self,
        st: &mut State,
        agent: &ureq::Agent,
        started: Instant,
    ) -> Result<SecretString, Error> {
        // Retry-After is capped by max_delay as well: a token endpoint's wait counts against one `get`.
        let backoff = Backoff {
            base: self.retry.base,
            max: self.retry.max_delay,
            retry_after_cap: self.retry.max_delay,
        };
        let mut at = started;
        let mut failures = 0u32;
        loop {
            let (e, retry_after) = match self.attempt(st, agent, at) {
                Ok(t) => return Ok(t),
                Err(x) => x,
            };
            failures += 1;
            if e.kind != ErrorKind::TransientFailure || failures >= self.retry.max_attempts {
                return Err(e);
            }
            let delay = backoff.delay(failures, random_u32(), retry_after);
            let spent = self.clock.now().saturating_duration_since(started);
            if spent + delay >= self.retry.max_total {
                return Err(e);
            }
            self.clock.sleep(delay);
            at = self.clock.now();
        }
    }
}

/// A uniformly random draw for the backoff's jitter; the top of the range if the system has no randomness (the
/// longest wait is the safe side).
fn random_u32() -> u32 {
    let mut r = [0u8; 4];
    match ring::rand::SystemRandom::new().fill(&mut r) {
        Ok(()) => u32::from_le_bytes(r),
        Err(_) => u32::MAX,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::providers::{CallbackSource, FetchError};
    use crate::clock::{Clock, ManualClock};
    use std::sync::atomic::{AtomicU32, Ordering};
    use std::sync::Arc;

    const S: fn(u64) -> Duration = Duration::from_secs;

    #[test]
    fn refresh_plans_follow_msal_and_short_token_rules() {
        let t0 = Instant::now();
        let p = |l: Lifetime, r: Option<Duration>, mi: bool| RefreshPlan::for_token(t0, l, r, mi);
        // An hour-long token: 5 minutes before expiry.
        assert_eq!(
            p(Lifetime::For(S(3600)), None, false).refresh_at,
            Some(t0 + S(3300))
        );
        // refresh_in wins.
        assert_eq!(
            p(Lifetime::For(S(3600)), Some(S(1800)), false).refresh_at,
            Some(t0 + S(1800))
        );
        // Managed identity, 24 h: half-life; but an hour-long MI token uses the 5-minute rule.
        assert_eq!(
            p(Lifetime::For(S(86400)), None, true).refresh_at,
            Some(t0 + S(43200))
        );
        assert_eq!(
            p(Lifetime::For(S(86400)), None, false).refresh_at,
            Some(t0 + S(86100))
        );
        assert_eq!(
            p(Lifetime::For(S(3600)), None, true).refresh_at,
            Some(t0 + S(3300))
        );
        // Short tokens: when a third remains.
        assert_eq!(
            p(Lifetime::For(S(3)), None, false).refresh_at,
            Some(t0 + S(2))
        );
        assert_eq!(
            p(Lifetime::For(S(540)), None, false).refresh_at,
            Some(t0 + S(360))
        );
        // Expiry margin: 30 s, or a tenth of short lives.
        assert_eq!(
            p(Lifetime::For(S(3600)), None, false).expires_at,
            Some(t0 + S(3570))
        );
        assert_eq!(
            p(Lifetime::For(S(10)), None, false).expires_at,
            Some(t0 + S(9))
        );
        assert_eq!(
            p(Lifetime::Forever, None, false),
            RefreshPlan {
                refresh_at: None,
                expires_at: None
            }
        );
        assert_eq!(
            p(Lifetime::Unknown, None, false).refresh_at,
            Some(t0 + S(60))
        );
    }

    /// A source that counts fetches and answers from a script.
    #[derive(Debug)]
    struct Scripted {
        n: AtomicU32,
        lifetime: Lifetime,
        /// Fetch numbers (1-based) that fail, and how.
        fail: Vec<(u32, ErrorKind)>,
        /// The `Retry-After` every failure comes with.
        retry_after: Option<Duration>,
    }

    impl TokenSource for Scripted {
        fn fetch(&self, ctx: &FetchContext<'_>) -> Result<AccessToken, FetchError> {
            assert_eq!(ctx.cloud.resource, "https://kusto.kusto.windows.net");
            let n = self.n.fetch_add(1, Ordering::SeqCst) + 1;
            if let Some((_, k)) = self.fail.iter().find(|(i, _)| *i == n) {
                return Err(FetchError {
                    error: Error::new(*k, format!("scripted failure {n}")),
                    retry_after: self.retry_after,
                });
            }
            Ok(AccessToken {
                token: SecretString::new(format!("token-{n}")),
                lifetime: self.lifetime,
                refresh_in: None,
                managed_identity: false,
            })
        }
        fn needs_cloud(&self) -> bool {
            false
        }
        fn name(&self) -> &'static str {
            "scripted"
        }
    }

    /// The policy of these tests: the default's shape with a shorter bound.
    const POLICY: RetryPolicy = RetryPolicy {
        max_attempts: 3,
        base: Duration::from_millis(500),
        max_delay: Duration::from_secs(5),
        max_total: Duration::from_secs(10),
        hold_after_transient: Duration::from_secs(2),
        hold_after_refusal: Duration::from_secs(30),
    };

    fn cache_with(
        source: Box<dyn TokenSource>,
        policy: RetryPolicy,
    ) -> (TokenCache, Arc<ManualClock>) {
        let clock = ManualClock::at_unix_ms(1_700_000_000_000);
        let c = TokenCache::new(source, CloudConfig::default(), policy, clock.clone());
        (c, clock)
    }

    fn scripted(lifetime: Lifetime, fail: Vec<(u32, ErrorKind)>) -> Box<Scripted> {
        Box::new(Scripted {
            n: AtomicU32::new(0),
            lifetime,
            fail,
            retry_after: None,
        })
    }

    fn cache(lifetime: Lifetime, fail: Vec<(u32, ErrorKind)>) -> (TokenCache, Arc<ManualClock>) {
        cache_with(scripted(lifetime, fail), POLICY)
    }

    fn agent() -> ureq::Agent {
        ureq::Agent::new_with_defaults()
    }

    fn get(c: &TokenCache, force: bool) -> Result<String, Error> {
        c.get(&agent(), force).map(|t| t.expose().to_owned())
    }

    const MS: fn(u64) -> Duration = Duration::from_millis;

    #[test]
    fn a_three_second_token_is_reused_then_refreshed_ahead_of_expiry() {
        let (c, clock) = cache(Lifetime::For(S(3)), vec![]);
        assert_eq!(get(&c, false).unwrap(), "token-1");
        clock.advance(MS(1900));
        assert_eq!(get(&c, false).unwrap(), "token-1");
        assert_eq!(c.fetch_count(), 1);
        // Two thirds through its life, before it expires, a new one is fetched.
        clock.advance(MS(200));
        assert_eq!(get(&c, false).unwrap(), "token-2");
        clock.advance(MS(400));
        assert_eq!(get(&c, false).unwrap(), "token-2");
        assert_eq!(c.fetch_count(), 2);
        assert_eq!(clock.elapsed(), MS(2500), "the cache never slept");
    }

    #[test]
    fn a_failed_refresh_keeps_the_valid_token_and_warns_once() {
        let (c, clock) = cache(
            Lifetime::For(S(3600)),
            vec![(2, ErrorKind::TransientFailure)],
        );
        assert_eq!(get(&c, false).unwrap(), "token-1");
        clock.advance(S(3301));
        assert_eq!(get(&c, false).unwrap(), "token-1");
        let w = c.take_warning().unwrap();
        assert!(
            w.message.contains("still using the current one"),
            "{}",
            w.message
        );
        assert!(c.take_warning().is_none());
        // Not retried on every call: after a pause (a tenth of the 269 s left, so 26.9 s).
        clock.advance(MS(100));
        assert_eq!(get(&c, false).unwrap(), "token-1");
        assert_eq!(c.fetch_count(), 2);
        clock.advance(S(26));
        assert_eq!(get(&c, false).unwrap(), "token-1");
        assert_eq!(c.fetch_count(), 2);
        clock.advance(S(1));
        assert_eq!(get(&c, false).unwrap(), "token-3");
        assert_eq!(clock.elapsed(), S(3301) + MS(100) + S(27), "no sleeping");
    }

    #[test]
    fn an_expired_token_is_never_returned() {
        let (c, clock) = cache(Lifetime::For(S(3600)), vec![(2, ErrorKind::AuthRefused)]);
        assert_eq!(get(&c, false).unwrap(), "token-1");
        clock.advance(S(3600));
        assert_eq!(get(&c, false).unwrap_err().kind, ErrorKind::AuthRefused);
    }

    #[test]
    fn transient_failures_are_retried_with_backoff_on_the_clock() {
        let fail = vec![
            (1, ErrorKind::TransientFailure),
            (2, ErrorKind::TransientFailure),
        ];
        let (c, clock) = cache(Lifetime::For(S(3600)), fail);
        assert_eq!(get(&c, false).unwrap(), "token-3");
        // Slept [250, 500] ms, then [500, 1000] ms (Backoff::delay with base 500 ms), on the clock only.
        let slept = clock.elapsed();
        assert!(slept >= MS(750) && slept <= MS(1500), "{slept:?}");
        // The token's life starts at the attempt that got it, after the sleeps: refreshed at 3300 s from there.
        clock.advance(S(3300) - MS(1));
        assert_eq!(get(&c, false).unwrap(), "token-3");
        clock.advance(MS(1));
        assert_eq!(get(&c, false).unwrap(), "token-4");

        let fail = (1..=10).map(|i| (i, ErrorKind::TransientFailure)).collect();
        let (c, _) = cache(Lifetime::For(S(3600)), fail);
        assert_eq!(
            get(&c, false).unwrap_err().kind,
            ErrorKind::TransientFailure
        );
        assert_eq!(c.fetch_count(), 3, "max_attempts");
    }

    #[test]
    fn retry_after_lengthens_the_wait_up_to_max_delay() {
        let fail = vec![(1, ErrorKind::TransientFailure)];
        let mut src = scripted(Lifetime::For(S(3600)), fail.clone());
        src.retry_after = Some(S(3));
        let (c, clock) = cache_with(src, POLICY);
        assert_eq!(get(&c, false).unwrap(), "token-2");
        assert_eq!(clock.elapsed(), S(3));
        // A day's Retry-After is capped by max_delay.
        let mut src = scripted(Lifetime::For(S(3600)), fail);
        src.retry_after = Some(S(86400));
        let (c, clock) = cache_with(src, POLICY);
        assert_eq!(get(&c, false).unwrap(), "token-2");
        assert_eq!(clock.elapsed(), S(5));
    }

    #[test]
    fn max_total_bounds_the_sleeps_of_one_get() {
        let fail = (1..=10).map(|i| (i, ErrorKind::TransientFailure)).collect();
        let mut src = scripted(Lifetime::For(S(3600)), fail);
        src.retry_after = Some(S(4));
        let policy = RetryPolicy {
            max_attempts: 10,
            max_total: S(9),
            ..POLICY
        };
        let (c, clock) = cache_with(src, policy);
        // 4 s, 4 s, and a third wait would end at 12 s, past 9 s: three attempts, 8 s slept.
        assert_eq!(
            get(&c, false).unwrap_err().kind,
            ErrorKind::TransientFailure
        );
        assert_eq!(c.fetch_count(), 3);
        assert_eq!(clock.elapsed(), S(8));
        // Held for hold_after_transient from when the retries gave up (not from when the get began, which
        // would make any hold shorter than the retries void), then asked again.
        clock.advance(S(2) - MS(1));
        assert_eq!(
            get(&c, false).unwrap_err().kind,
            ErrorKind::TransientFailure
        );
        assert_eq!(c.fetch_count(), 3, "held");
        clock.advance(MS(1));
        assert_eq!(
            get(&c, false).unwrap_err().kind,
            ErrorKind::TransientFailure
        );
        assert_eq!(c.fetch_count(), 6, "asked again, with retries");
    }

    #[test]
    fn refusals_are_not_retried_and_are_held() {
        let (c, clock) = cache(Lifetime::For(S(3600)), vec![(1, ErrorKind::AuthRefused)]);
        assert_eq!(get(&c, false).unwrap_err().kind, ErrorKind::AuthRefused);
        assert_eq!(clock.elapsed(), Duration::ZERO, "no backoff for a refusal");
        clock.advance(S(10));
        assert_eq!(get(&c, false).unwrap_err().kind, ErrorKind::AuthRefused);
        assert_eq!(c.fetch_count(), 1, "held, not asked again");
        clock.advance(S(21));
        assert_eq!(get(&c, false).unwrap(), "token-2");
    }

    #[test]
    fn force_refresh_fetches_unless_just_fetched() {
        let (c, clock) = cache(Lifetime::For(S(3600)), vec![]);
        assert_eq!(get(&c, false).unwrap(), "token-1");
        // Several requests failing with 401 together get the token fetched a moment ago.
        clock.advance(MS(999));
        assert_eq!(get(&c, true).unwrap(), "token-1");
        clock.advance(MS(1));
        assert_eq!(get(&c, true).unwrap(), "token-2");
        clock.advance(MS(500));
        assert_eq!(get(&c, true).unwrap(), "token-2");
        assert_eq!(c.fetch_count(), 2);
    }

    #[test]
    fn unknown_lifetime_is_reused_for_a_minute() {
        let (c, clock) = cache(Lifetime::Unknown, vec![]);
        assert_eq!(get(&c, false).unwrap(), "token-1");
        clock.advance(S(59));
        assert_eq!(get(&c, false).unwrap(), "token-1");
        clock.advance(S(2));
        assert_eq!(get(&c, false).unwrap(), "token-2");
    }

    #[test]
    fn an_expires_on_is_read_on_the_cache_clock_wall_time() {
        // The callback's token expires 540 s after the clock's wall time (2023, not the machine's, by which it
        // would have expired long ago): refreshed when a third of that remains, on the same clock.
        let clock_wall = 1_700_000_000u64;
        let n = Arc::new(AtomicU32::new(0));
        let n2 = n.clone();
        let src = CallbackSource::new(Arc::new(move || {
            let i = n2.fetch_add(1, Ordering::SeqCst) + 1;
            Ok((format!("cb-{i}"), clock_wall + 540 * i as u64))
        }));
        let (c, clock) = cache_with(Box::new(src), POLICY);
        assert_eq!(crate::clock::unix_ms(clock.wall()), clock_wall * 1000);
        assert_eq!(get(&c, false).unwrap(), "cb-1");
        clock.advance(S(359));
        assert_eq!(get(&c, false).unwrap(), "cb-1");
        clock.advance(S(1));
        assert_eq!(get(&c, false).unwrap(), "cb-2");
    }

    #[test]
    fn concurrent_callers_share_one_fetch() {
        let (c, _clock) = cache(Lifetime::For(S(3600)), vec![]);
        let c = Arc::new(c);
        let hs: Vec<_> = (0..8)
            .map(|_| {
                let c = c.clone();
                std::thread::spawn(move || get(&c, false).unwrap())
            })
            .collect();
        for h in hs {
            assert_eq!(h.join().unwrap(), "token-1");
        }
        assert_eq!(c.fetch_count(), 1);
    }
}
