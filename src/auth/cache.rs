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

use crate::error::{Error, ErrorKind};

use super::metadata::{Cloud, CloudConfig};
use super::providers::{AccessToken, Lifetime, TokenSource};
use super::secret::SecretString;
use super::FetchContext;

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
    /// Delay before the second attempt; doubles, with jitter.
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
    /// A cache around `source`. `cloud` says where the authority and resource come from; `retry` bounds `get`.
    pub fn new(source: Box<dyn TokenSource>, cloud: CloudConfig, retry: RetryPolicy) -> Self {
        TokenCache {
            source,
            cloud_config: cloud,
            retry,
            state: Mutex::new(State::default()),
        }
    }

    /// The token to send now. `force_refresh` after a 401 from Kusto: a new token is fetched unless one was fetched
    /// within the last second. Blocks for at most about `retry.max_total` plus one request when it has to fetch.
    pub fn get(&self, agent: &ureq::Agent, force_refresh: bool) -> Result<SecretString, Error> {
        self.get_at(agent, force_refresh, Instant::now(), &std::thread::sleep)
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

    /// `get` with the clock and the sleep passed in, for tests.
    pub(crate) fn get_at(
        &self,
        agent: &ureq::Agent,
        force: bool,
        now: Instant,
        sleep: &dyn Fn(Duration),
    ) -> Result<SecretString, Error> {
        let mut st = self.lock();
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
        match self.fetch_with_retry(&mut st, agent, now, sleep) {
            Ok(t) => Ok(t),
            Err(e) => {
                let hold = if e.kind == ErrorKind::TransientFailure {
                    self.retry.hold_after_transient
                } else {
                    self.retry.hold_after_refusal
                };
                st.held = Some((now + hold, e.clone()));
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
        let ctx = FetchContext { agent, cloud };
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
        now: Instant,
        sleep: &dyn Fn(Duration),
    ) -> Result<SecretString, Error> {
        let started = Instant::now();
        let mut attempt = 0u32;
        loop {
            // Each attempt is stamped with the caller's clock plus the real time spent so far.
            let at = now + started.elapsed();
            let (e, retry_after) = match self.attempt(st, agent, at) {
                Ok(t) => return Ok(t),
                Err(x) => x,
            };
            attempt += 1;
            if e.kind != ErrorKind::TransientFailure || attempt >= self.retry.max_attempts {
                return Err(e);
            }
            let delay = backoff(attempt - 1, self.retry.base, self.retry.max_delay)
                .max(retry_after.unwrap_or_default().min(self.retry.max_delay));
            if started.elapsed() + delay >= self.retry.max_total {
                return Err(e);
            }
            sleep(delay);
        }
    }
}

/// Exponential backoff with jitter in the upper half: `[c/2, c]` with `c = min(max, base * 2^attempt)`.
fn backoff(attempt: u32, base: Duration, max: Duration) -> Duration {
    let ceiling = base
        .checked_mul(1u32.checked_shl(attempt.min(20)).unwrap_or(u32::MAX))
        .unwrap_or(max)
        .min(max);
    let mut r = [0u8; 2];
    let frac = match ring::rand::SystemRandom::new().fill(&mut r) {
        Ok(()) => u16::from_le_bytes(r) as u32,
        Err(_) => u16::MAX as u32,
    };
    ceiling / 2 + (ceiling / 2) * frac / u16::MAX as u32
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::providers::FetchError;
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
    }

    impl TokenSource for Scripted {
        fn fetch(&self, ctx: &FetchContext<'_>) -> Result<AccessToken, FetchError> {
            assert_eq!(ctx.cloud.resource, "https://kusto.kusto.windows.net");
            let n = self.n.fetch_add(1, Ordering::SeqCst) + 1;
            if let Some((_, k)) = self.fail.iter().find(|(i, _)| *i == n) {
                return Err(Error::new(*k, format!("scripted failure {n}")).into());
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

    fn cache(lifetime: Lifetime, fail: Vec<(u32, ErrorKind)>) -> TokenCache {
        let policy = RetryPolicy {
            max_attempts: 3,
            base: Duration::ZERO,
            max_delay: Duration::ZERO,
            max_total: S(5),
            hold_after_transient: S(2),
            hold_after_refusal: S(30),
        };
        TokenCache::new(
            Box::new(Scripted {
                n: AtomicU32::new(0),
                lifetime,
                fail,
            }),
            CloudConfig::default(),
            policy,
        )
    }

    fn agent() -> ureq::Agent {
        ureq::Agent::new_with_defaults()
    }

    fn no_sleep(_: Duration) {}

    fn get(c: &TokenCache, a: &ureq::Agent, force: bool, at: Instant) -> Result<String, Error> {
        c.get_at(a, force, at, &no_sleep)
            .map(|t| t.expose().to_owned())
    }

    #[test]
    fn a_three_second_token_is_reused_then_refreshed_ahead_of_expiry() {
        let (c, a, t0) = (cache(Lifetime::For(S(3)), vec![]), agent(), Instant::now());
        assert_eq!(get(&c, &a, false, t0).unwrap(), "token-1");
        assert_eq!(
            get(&c, &a, false, t0 + Duration::from_millis(1900)).unwrap(),
            "token-1"
        );
        assert_eq!(c.fetch_count(), 1);
        // Two thirds through its life (plus the moment the first fetch took), before it expires, a new one is
        // fetched.
        assert_eq!(
            get(&c, &a, false, t0 + Duration::from_millis(2100)).unwrap(),
            "token-2"
        );
        assert_eq!(
            get(&c, &a, false, t0 + Duration::from_millis(2500)).unwrap(),
            "token-2"
        );
        assert_eq!(c.fetch_count(), 2);
    }

    #[test]
    fn real_clock_three_second_token_refreshes() {
        let c = cache(Lifetime::For(S(3)), vec![]);
        let a = agent();
        assert_eq!(c.get(&a, false).unwrap().expose(), "token-1");
        assert_eq!(c.get(&a, false).unwrap().expose(), "token-1");
        std::thread::sleep(Duration::from_millis(2100));
        assert_eq!(c.get(&a, false).unwrap().expose(), "token-2");
    }

    #[test]
    fn a_failed_refresh_keeps_the_valid_token_and_warns_once() {
        let (c, a, t0) = (
            cache(
                Lifetime::For(S(3600)),
                vec![(2, ErrorKind::TransientFailure)],
            ),
            agent(),
            Instant::now(),
        );
        assert_eq!(get(&c, &a, false, t0).unwrap(), "token-1");
        let due = t0 + S(3301);
        assert_eq!(get(&c, &a, false, due).unwrap(), "token-1");
        let w = c.take_warning().unwrap();
        assert!(
            w.message.contains("still using the current one"),
            "{}",
            w.message
        );
        assert!(c.take_warning().is_none());
        // Not retried on every call: after a pause.
        assert_eq!(
            get(&c, &a, false, due + Duration::from_millis(100)).unwrap(),
            "token-1"
        );
        assert_eq!(c.fetch_count(), 2);
        assert_eq!(get(&c, &a, false, due + S(30)).unwrap(), "token-3");
    }

    #[test]
    fn an_expired_token_is_never_returned() {
        let (c, a, t0) = (
            cache(Lifetime::For(S(3600)), vec![(2, ErrorKind::AuthRefused)]),
            agent(),
            Instant::now(),
        );
        assert_eq!(get(&c, &a, false, t0).unwrap(), "token-1");
        let e = get(&c, &a, false, t0 + S(3600)).unwrap_err();
        assert_eq!(e.kind, ErrorKind::AuthRefused);
    }

    #[test]
    fn transient_failures_are_retried_within_the_bound() {
        let fail = vec![
            (1, ErrorKind::TransientFailure),
            (2, ErrorKind::TransientFailure),
        ];
        let (c, a, t0) = (cache(Lifetime::For(S(3600)), fail), agent(), Instant::now());
        assert_eq!(get(&c, &a, false, t0).unwrap(), "token-3");
        let fail = (1..=10).map(|i| (i, ErrorKind::TransientFailure)).collect();
        let (c, t0) = (cache(Lifetime::For(S(3600)), fail), Instant::now());
        assert_eq!(
            get(&c, &a, false, t0).unwrap_err().kind,
            ErrorKind::TransientFailure
        );
        assert_eq!(c.fetch_count(), 3, "max_attempts");
    }

    #[test]
    fn refusals_are_not_retried_and_are_held() {
        let (c, a, t0) = (
            cache(Lifetime::For(S(3600)), vec![(1, ErrorKind::AuthRefused)]),
            agent(),
            Instant::now(),
        );
        assert_eq!(
            get(&c, &a, false, t0).unwrap_err().kind,
            ErrorKind::AuthRefused
        );
        assert_eq!(
            get(&c, &a, false, t0 + S(10)).unwrap_err().kind,
            ErrorKind::AuthRefused
        );
        assert_eq!(c.fetch_count(), 1, "held, not asked again");
        assert_eq!(get(&c, &a, false, t0 + S(31)).unwrap(), "token-2");
    }

    #[test]
    fn force_refresh_fetches_unless_just_fetched() {
        let (c, a, t0) = (
            cache(Lifetime::For(S(3600)), vec![]),
            agent(),
            Instant::now(),
        );
        assert_eq!(get(&c, &a, false, t0).unwrap(), "token-1");
        // Several requests failing with 401 together get the token fetched a moment ago.
        assert_eq!(
            get(&c, &a, true, t0 + Duration::from_millis(500)).unwrap(),
            "token-1"
        );
        assert_eq!(get(&c, &a, true, t0 + S(2)).unwrap(), "token-2");
        assert_eq!(
            get(&c, &a, true, t0 + Duration::from_millis(2500)).unwrap(),
            "token-2"
        );
        assert_eq!(c.fetch_count(), 2);
    }

    #[test]
    fn unknown_lifetime_is_reused_for_a_minute() {
        let (c, a, t0) = (cache(Lifetime::Unknown, vec![]), agent(), Instant::now());
        assert_eq!(get(&c, &a, false, t0).unwrap(), "token-1");
        assert_eq!(get(&c, &a, false, t0 + S(59)).unwrap(), "token-1");
        assert_eq!(get(&c, &a, false, t0 + S(61)).unwrap(), "token-2");
    }

    #[test]
    fn concurrent_callers_share_one_fetch() {
        let c = Arc::new(cache(Lifetime::For(S(3600)), vec![]));
        let hs: Vec<_> = (0..8)
            .map(|_| {
                let c = c.clone();
                std::thread::spawn(move || c.get(&agent(), false).unwrap().expose().to_owned())
            })
            .collect();
        for h in hs {
            assert_eq!(h.join().unwrap(), "token-1");
        }
        assert_eq!(c.fetch_count(), 1);
    }

    #[test]
    fn backoff_stays_within_its_bounds() {
        for a in 0..40 {
            let d = backoff(a, Duration::from_millis(100), S(5));
            let ceiling = (Duration::from_millis(100) * 2u32.pow(a.min(20))).min(S(5));
            assert!(d >= ceiling / 2 && d <= ceiling, "{a}: {d:?}");
        }
    }
}
