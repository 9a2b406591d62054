//! Failed-login limits that an attacker cannot turn against a victim.
//!
//! [`LoginLimits`] keeps three failure counters, each a [`FailureLimiter`]:
//!
//! - per account *and* client address: a few failures (5 by default) lock
//!   that pair only, so a guesser locks out itself, not the account;
//! - per account, across addresses: the brute-force ceiling (25 per
//!   15-minute window by default, at most 100 an hour, OWASP ASVS 2.2.1);
//! - per client address, across accounts: credential stuffing from one
//!   address (50 by default).
//!
//! The last two do not apply to an address the account has logged in from
//! successfully within [`KNOWN_FOR`]: a victim keeps logging in from their
//! usual address while someone else hammers their name, and users behind
//! one NAT or proxy are not locked out by a neighbour. Only the first
//! counter applies there. Success never clears the account-wide count, so
//! the owner logging in does not hand a guesser a fresh budget.
//!
//! Each key may fail `max_failures` times within a fixed window that starts
//! at its first failure; after that, attempts are refused with the time
//! left until the window ends, without checking the password. Counts live
//! in this process: with several replicas each enforces its own limit
//! (documented in the README). This is a lockout policy over *failures*,
//! not a request-rate limiter, which is why it is not built on a
//! token-bucket crate.

use std::collections::HashMap;
use std::net::IpAddr;
use std::num::NonZeroU32;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// How long an address stays known to an account after a successful login.
pub const KNOWN_FOR: Duration = Duration::from_secs(30 * 86_400);
/// Most (account, address) pairs remembered as known; past it, expired
/// pairs are swept and, if none expired, new ones are not remembered.
const MAX_KNOWN: usize = 200_000;

/// The three failure counters and the known addresses (module docs).
pub struct LoginLimits {
    pair: FailureLimiter,
    account: FailureLimiter,
    address: FailureLimiter,
    known: Mutex<HashMap<(String, IpAddr), Instant>>,
}

/// The limits of [`LoginLimits`].
#[derive(Debug, Clone, Copy)]
pub struct LoginPolicy {
    pub per_account_address: NonZeroU32,
    pub per_account: NonZeroU32,
    pub per_address: NonZeroU32,
    pub window: Duration,
}

impl LoginLimits {
    pub fn new(policy: LoginPolicy) -> Self {
        Self {
            pair: FailureLimiter::new(policy.per_account_address, policy.window),
            account: FailureLimiter::new(policy.per_account, policy.window),
            address: FailureLimiter::new(policy.per_address, policy.window),
            known: Mutex::new(HashMap::new()),
        }
    }

    /// `Err(retry_after)` when a login for `account` from `ip` must not
    /// even be tried now.
    pub fn check(&self, account: &str, ip: Option<IpAddr>, now: Instant) -> Result<(), Duration> {
        self.pair.check(&pair_key(account, ip), now)?;
        if self.is_known(account, ip, now) {
            return Ok(());
        }
        self.account.check(account, now)?;
        if let Some(ip) = ip {
            self.address.check(&ip.to_string(), now)?;
        }
        Ok(())
    }

    pub fn failed(&self, account: &str, ip: Option<IpAddr>, now: Instant) {
        self.pair.record_failure(&pair_key(account, ip), now);
        if self.is_known(account, ip, now) {
            return;
        }
        self.account.record_failure(account, now);
        if let Some(ip) = ip {
            self.address.record_failure(&ip.to_string(), now);
        }
    }

    /// A successful login: the pair's count is cleared and the address
    /// becomes known to the account.
    pub fn succeeded(&self, account: &str, ip: Option<IpAddr>, now: Instant) {
        self.pair.clear(&pair_key(account, ip));
        let Some(ip) = ip else { return };
        let mut known = self.known();
        if known.len() >= MAX_KNOWN {
            known.retain(|_, since| now.saturating_duration_since(*since) < KNOWN_FOR);
        }
        let key = (account.to_owned(), ip);
        if known.len() < MAX_KNOWN || known.contains_key(&key) {
            known.insert(key, now);
        }
    }

    fn is_known(&self, account: &str, ip: Option<IpAddr>, now: Instant) -> bool {
        let Some(ip) = ip else { return false };
        self.known()
            .get(&(account.to_owned(), ip))
            .is_some_and(|since| now.saturating_duration_since(*since) < KNOWN_FOR)
    }

    fn known(&self) -> std::sync::MutexGuard<'_, HashMap<(String, IpAddr), Instant>> {
        self.known
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

fn pair_key(account: &str, ip: Option<IpAddr>) -> String {
    match ip {
        Some(ip) => format!("{account} {ip}"),
        None => account.to_owned(),
    }
}

/// Above this many tracked keys, expired entries are swept on insert, so
/// memory stays bounded by the number of keys failing within one window.
const SWEEP_ABOVE: usize = 10_000;

pub struct FailureLimiter {
    max_failures: NonZeroU32,
    window: Duration,
    entries: Mutex<HashMap<String, Entry>>,
}

#[derive(Clone, Copy)]
struct Entry {
    failures: u32,
    window_start: Instant,
}

impl FailureLimiter {
    pub fn new(max_failures: NonZeroU32, window: Duration) -> Self {
        Self {
            max_failures,
            window,
            entries: Mutex::new(HashMap::new()),
        }
    }

    /// `Err(retry_after)` when `key` has used up its failures.
    pub fn check(&self, key: &str, now: Instant) -> Result<(), Duration> {
        let entries = self.lock();
        match entries.get(key) {
            Some(e) if e.failures >= self.max_failures.get() => {
                let ends = e.window_start + self.window;
                if now < ends {
                    Err(ends - now)
                } else {
                    Ok(())
                }
            }
            _ => Ok(()),
        }
    }

    pub fn record_failure(&self, key: &str, now: Instant) {
        let mut entries = self.lock();
        if entries.len() >= SWEEP_ABOVE {
            let window = self.window;
            entries.retain(|_, e| now < e.window_start + window);
        }
        let entry = entries.entry(key.to_owned()).or_insert(Entry {
            failures: 0,
            window_start: now,
        });
        if now >= entry.window_start + self.window {
            *entry = Entry {
                failures: 0,
                window_start: now,
            };
        }
        entry.failures = entry.failures.saturating_add(1);
    }

    pub fn clear(&self, key: &str) {
        self.lock().remove(key);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Entry>> {
        // A poisoned map only holds counters: keep using it.
        self.entries
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy() -> LoginPolicy {
        LoginPolicy {
            per_account_address: NonZeroU32::new(5).expect("positive"),
            per_account: NonZeroU32::new(25).expect("positive"),
            per_address: NonZeroU32::new(50).expect("positive"),
            window: Duration::from_secs(900),
        }
    }

    fn ip(last: u8) -> Option<IpAddr> {
        Some(IpAddr::from([10, 0, 0, last]))
    }

    #[test]
    fn a_guesser_locks_out_itself_and_the_victim_logs_in_from_a_known_address() {
        let limits = LoginLimits::new(policy());
        let t0 = Instant::now();
        limits.succeeded("victim", ip(1), t0);
        // One attacker address: locked after 5.
        for _ in 0..5 {
            assert!(limits.check("victim", ip(9), t0).is_ok());
            limits.failed("victim", ip(9), t0);
        }
        assert!(limits.check("victim", ip(9), t0).is_err());
        // Many attacker addresses: the account-wide ceiling of 25.
        let mut tried = 5;
        for last in 10..=250 {
            while limits.check("victim", ip(last), t0).is_ok() {
                limits.failed("victim", ip(last), t0);
                tried += 1;
            }
        }
        assert_eq!(tried, 25, "failures an attacker gets per window");
        // A new address is refused, the victim's usual one is not.
        assert!(limits.check("victim", ip(251), t0).is_err());
        assert!(limits.check("victim", ip(1), t0).is_ok());
        // Other accounts from the attacker's addresses are untouched
        // until the per-address limit.
        assert!(limits.check("other", ip(9), t0).is_ok());
    }

    #[test]
    fn at_most_100_failures_an_hour_per_account() {
        let limits = LoginLimits::new(policy());
        let t0 = Instant::now();
        let mut failures = 0;
        let mut address = 0u32;
        for second in 0..3600 {
            let now = t0 + Duration::from_secs(second);
            for _ in 0..10 {
                address += 1;
                let from = Some(IpAddr::from(address.to_be_bytes()));
                if limits.check("victim", from, now).is_ok() {
                    limits.failed("victim", from, now);
                    failures += 1;
                }
            }
        }
        assert!(failures <= 100, "{failures}");
        assert!(failures >= 75, "{failures}");
    }

    #[test]
    fn a_shared_address_does_not_lock_out_its_known_users() {
        let limits = LoginLimits::new(policy());
        let t0 = Instant::now();
        limits.succeeded("alice", ip(1), t0);
        for i in 0..60 {
            limits.failed(&format!("stranger{i}"), ip(1), t0);
        }
        assert!(
            limits.check("bob", ip(1), t0).is_err(),
            "stuffing is limited"
        );
        assert!(
            limits.check("alice", ip(1), t0).is_ok(),
            "alice is known here"
        );
        // Known expires.
        let later = t0 + KNOWN_FOR;
        for i in 0..60 {
            limits.failed(&format!("stranger{i}"), ip(1), later);
        }
        assert!(limits.check("alice", ip(1), later).is_err());
    }

    #[test]
    fn trips_after_max_failures_and_recovers_when_the_window_ends() {
        let l = FailureLimiter::new(
            NonZeroU32::new(3).expect("positive"),
            Duration::from_secs(60),
        );
        let t0 = Instant::now();
        for i in 0..3 {
            assert!(l.check("k", t0).is_ok(), "refused after {i} failures");
            l.record_failure("k", t0 + Duration::from_secs(i));
        }
        let retry = l
            .check("k", t0 + Duration::from_secs(10))
            .expect_err("tripped");
        assert_eq!(retry, Duration::from_secs(50));
        assert!(l.check("other", t0).is_ok());
        assert!(l.check("k", t0 + Duration::from_secs(60)).is_ok());
        // A failure after the window starts a new one.
        l.record_failure("k", t0 + Duration::from_secs(61));
        assert!(l.check("k", t0 + Duration::from_secs(61)).is_ok());
    }

    #[test]
    fn clear_resets() {
        let l = FailureLimiter::new(NonZeroU32::MIN, Duration::from_secs(60));
        let t0 = Instant::now();
        l.record_failure("k", t0);
        assert!(l.check("k", t0).is_err());
        l.clear("k");
        assert!(l.check("k", t0).is_ok());
    }

    #[test]
    fn expired_entries_are_swept() {
        let l = FailureLimiter::new(NonZeroU32::MIN, Duration::from_secs(1));
        let t0 = Instant::now();
        for i in 0..SWEEP_ABOVE {
            l.record_failure(&i.to_string(), t0);
        }
        l.record_failure("late", t0 + Duration::from_secs(2));
        assert_eq!(l.lock().len(), 1);
    }
}
