//! Failed-login limits.
//!
//! Each key (an account's normalised username, or a client address) may fail
//! `max_failures` times within a fixed window that starts at its first
//! failure; after that, attempts are refused with the time left until the
//! window ends, without checking the password. A success clears the
//! account's count. Counts live in this process: with several replicas each
//! enforces its own limit (documented in the README).
//!
//! This is a lockout policy over *failures*, not a request-rate limiter,
//! which is why it is not built on a token-bucket crate.

use std::collections::HashMap;
use std::num::NonZeroU32;
use std::sync::Mutex;
use std::time::{Duration, Instant};

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
