//! The SDKs' choice of storage: per account, six 10-second buckets of successes and failures; a rank from their
//! success rates (newest weighs 6, oldest 1, empty buckets skipped, no data ranks 1.0); tiers ≥ 0.9, ≥ 0.7,
//! ≥ 0.3 and the rest, shuffled inside a tier; resources interleaved round-robin across the accounts in that
//! order; at most [`MAX_TRIES`] per operation. Fixed memory: [`MAX_ACCOUNTS`] accounts are tracked.

use super::resources::StorageUrl;

/// Resources one upload or enqueue tries at most.
pub const MAX_TRIES: usize = 3;
/// Accounts tracked (real DMs use a handful; more are ranked as if they had no data).
pub const MAX_ACCOUNTS: usize = 16;
/// Buckets per account.
pub const BUCKETS: usize = 6;
/// Seconds per bucket.
pub const BUCKET_SECS: u64 = 10;

#[derive(Clone, Copy, Debug, Default)]
struct Bucket {
    /// Which 10-second slot this bucket holds (seconds / 10).
    slot: u64,
    ok: u32,
    failed: u32,
}

#[derive(Clone, Debug)]
struct Account {
    name: heapless::String<64>,
    buckets: [Bucket; BUCKETS],
}

/// Success counts per account.
#[derive(Clone, Debug, Default)]
pub struct AccountStats {
    accounts: heapless::Vec<Account, MAX_ACCOUNTS>,
}

impl AccountStats {
    /// Records one operation's result at `secs` (seconds on any monotonic scale).
    pub fn record(&mut self, account: &str, ok: bool, secs: u64) {
        let slot = secs / BUCKET_SECS;
        let i = match self.accounts.iter().position(|a| a.name == account) {
            Some(i) => i,
            None => {
                let Ok(name) = heapless::String::try_from(account) else {
                    return;
                };
                if self
                    .accounts
                    .push(Account {
                        name,
                        buckets: [Bucket::default(); BUCKETS],
                    })
                    .is_err()
                {
                    return;
                }
                self.accounts.len() - 1
            }
        };
        let b = &mut self.accounts[i].buckets[(slot % BUCKETS as u64) as usize];
        if b.slot != slot {
            *b = Bucket {
                slot,
                ok: 0,
                failed: 0,
            };
        }
        if ok {
            b.ok = b.ok.saturating_add(1);
        } else {
            b.failed = b.failed.saturating_add(1);
        }
    }

    /// The account's rank in `0.0..=1.0` at `secs`.
    pub fn rank(&self, account: &str, secs: u64) -> f64 {
        let Some(a) = self.accounts.iter().find(|a| a.name == account) else {
            return 1.0;
        };
        let now = secs / BUCKET_SECS;
        let (mut sum, mut weights) = (0.0, 0.0);
        for b in &a.buckets {
            let age = now.wrapping_sub(b.slot);
            let total = b.ok as u64 + b.failed as u64;
            if age >= BUCKETS as u64 || total == 0 {
                continue;
            }
            let w = (BUCKETS as u64 - age) as f64;
            sum += w * b.ok as f64 / total as f64;
            weights += w;
        }
        if weights == 0.0 {
            1.0
        } else {
            sum / weights
        }
    }
}

/// The tier of a rank: 0 is best.
pub fn tier(rank: f64) -> u8 {
    if rank >= 0.9 {
        0
    } else if rank >= 0.7 {
        1
    } else if rank >= 0.3 {
        2
    } else {
        3
    }
}

/// The resources to try, best first: indices into `urls`, at most [`MAX_TRIES`]. `random` shuffles accounts
/// within a tier.
pub fn choose(
    urls: &[StorageUrl],
    stats: &AccountStats,
    secs: u64,
    random: u32,
) -> heapless::Vec<usize, MAX_TRIES> {
    // Accounts in order of first appearance, with their tier and a random key for the shuffle.
    let mut accounts: heapless::Vec<(&str, u8, u32), MAX_ACCOUNTS> = heapless::Vec::new();
    let mut x = random | 1;
    for u in urls {
        if accounts.iter().any(|a| a.0 == u.account.as_str()) {
            continue;
        }
        // xorshift32: a different key per account from one draw.
        x ^= x << 13;
        x ^= x >> 17;
        x ^= x << 5;
        let _ = accounts.push((u.account.as_str(), tier(stats.rank(&u.account, secs)), x));
    }
    accounts.sort_unstable_by_key(|a| (a.1, a.2));
    let mut out = heapless::Vec::new();
    // Round robin: the first resource of each account in order, then the second, and so on.
    for round in 0..urls.len() {
        for a in &accounts {
            if let Some((i, _)) = urls
                .iter()
                .enumerate()
                .filter(|(_, u)| u.account.as_str() == a.0)
                .nth(round)
            {
                if out.push(i).is_err() {
                    return out;
                }
            }
        }
    }
    // Accounts beyond MAX_ACCOUNTS were never ranked: try them last.
    for (i, u) in urls.iter().enumerate() {
        if !accounts.iter().any(|a| a.0 == u.account.as_str()) && out.push(i).is_err() {
            break;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::secret::SecretString;

    fn url(account: &str, n: u32) -> StorageUrl {
        StorageUrl {
            url: SecretString::new(format!("https://{account}.blob.core.windows.net/c{n}?sig")),
            account: heapless::String::try_from(account).unwrap(),
        }
    }

    #[test]
    fn no_data_ranks_one_and_newer_buckets_weigh_more() {
        let mut s = AccountStats::default();
        assert_eq!(s.rank("a", 100), 1.0);
        // Old bucket: all failures; newest: all successes. Weights 5 (10 s ago) and 6 (now).
        s.record("a", false, 90);
        s.record("a", true, 100);
        let r = s.rank("a", 100);
        assert!((r - 6.0 / 11.0).abs() < 1e-9, "{r}");
        // A minute later the old data has aged out.
        assert_eq!(s.rank("a", 160), 1.0);
        s.record("a", false, 160);
        assert_eq!(s.rank("a", 160), 0.0);
        assert_eq!(
            [tier(0.95), tier(0.9), tier(0.75), tier(0.3), tier(0.29)],
            [0, 0, 1, 2, 3]
        );
    }

    #[test]
    fn choice_interleaves_accounts_best_tier_first_and_stops_at_three() {
        let urls = [
            url("a", 0),
            url("a", 1),
            url("a", 2),
            url("b", 0),
            url("b", 1),
            url("c", 0),
        ];
        let mut s = AccountStats::default();
        for _ in 0..10 {
            s.record("a", false, 5);
            s.record("c", false, 5);
        }
        s.record("c", true, 5);
        for r in [0, 1, 7, u32::MAX] {
            let got = choose(&urls, &s, 5, r);
            // b (no data: 1.0) first, then c (tier 3 like a, order random), round robin across accounts.
            assert_eq!(got.len(), MAX_TRIES);
            assert_eq!(got[0], 3, "{got:?}");
            let accounts: Vec<&str> = got.iter().map(|&i| urls[i].account.as_str()).collect();
            assert_ne!(accounts[1], "b", "interleaved: {accounts:?}");
            assert_ne!(accounts[1], accounts[2], "interleaved: {accounts:?}");
        }
        // One resource: tried once.
        assert_eq!(choose(&urls[..1], &s, 5, 3).as_slice(), &[0]);
    }

    #[test]
    fn a_shuffle_spreads_equal_accounts() {
        let urls = [url("a", 0), url("b", 0), url("c", 0)];
        let s = AccountStats::default();
        let firsts: std::collections::HashSet<usize> = (0..64u32)
            .map(|r| choose(&urls, &s, 0, r.wrapping_mul(2654435761))[0])
            .collect();
        assert!(firsts.len() > 1, "always the same first account");
    }
}
