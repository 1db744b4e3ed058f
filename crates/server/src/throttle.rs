//! Slows password guessing on the console sign-in page and on HTTP Basic API calls.
//!
//! Failures are counted per key — the client's address, and separately the username
//! tried — until a quiet window passes. A few failures are free (people mistype); past that,
//! each further failure locks the key for a delay that doubles, up to a cap. The per-
//! address budget is small; the per-username one is larger, so a guesser rotating
//! addresses still hits a wall without a single mistyping colleague locking the admin
//! out. A success clears both keys.
//!
//! Pure state with time passed in, so the policy is tested without sleeping.

use std::collections::HashMap;
use std::time::{Duration, Instant};

/// How long after the last failure the count is forgotten.
const WINDOW: Duration = Duration::from_secs(15 * 60);
/// Longest lock after repeated failures.
const MAX_LOCK: Duration = Duration::from_secs(15 * 60);
/// Keys tracked at most; beyond this the oldest entries are forgotten first, so a flood
/// of addresses cannot exhaust memory (it only shortens everyone's memory).
const MAX_KEYS: usize = 20_000;

/// What is being throttled: a client address or a username.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub(crate) enum Key {
    Address(String),
    Username(String),
}

impl Key {
    /// Failures tolerated in one window before locks start.
    fn free_failures(&self) -> u32 {
        match self {
            Key::Address(_) => 5,
            Key::Username(_) => 20,
        }
    }
}

#[derive(Clone, Copy, Debug)]
struct Entry {
    failures: u32,
    last_failure: Instant,
    locked_until: Option<Instant>,
}

/// Failure counts per key.
#[derive(Debug, Default)]
pub(crate) struct LoginThrottle {
    entries: HashMap<Key, Entry>,
}

impl LoginThrottle {
    /// How long the caller must wait before trying again, if any key is locked.
    pub(crate) fn wait(&self, now: Instant, keys: &[Key]) -> Option<Duration> {
        keys.iter()
            .filter_map(|k| self.entries.get(k)?.locked_until)
            .filter(|until| *until > now)
            .map(|until| until - now)
            .max()
    }

    /// Records a failed attempt for each key.
    pub(crate) fn failed(&mut self, now: Instant, keys: &[Key]) {
        if self.entries.len() >= MAX_KEYS {
            self.forget_old(now);
        }
        for key in keys {
            let free = key.free_failures();
            let entry = self.entries.entry(key.clone()).or_insert(Entry {
                failures: 0,
                last_failure: now,
                locked_until: None,
            });
            // The count is forgotten only after a quiet window: a guesser who keeps
            // going never gets a fresh allowance.
            if now.duration_since(entry.last_failure) > WINDOW {
                *entry = Entry {
                    failures: 0,
                    last_failure: now,
                    locked_until: None,
                };
            }
            entry.failures += 1;
            entry.last_failure = now;
            if entry.failures > free {
                let excess = (entry.failures - free - 1).min(16);
                let lock = Duration::from_secs(1u64 << excess).min(MAX_LOCK);
                entry.locked_until = Some(now + lock);
            }
        }
    }

    /// A successful sign-in clears its keys.
    pub(crate) fn succeeded(&mut self, keys: &[Key]) {
        for key in keys {
            self.entries.remove(key);
        }
    }

    fn forget_old(&mut self, now: Instant) {
        self.entries.retain(|_, e| {
            now.duration_since(e.last_failure) <= WINDOW || e.locked_until.is_some_and(|u| u > now)
        });
        if self.entries.len() >= MAX_KEYS {
            // Still full of fresh entries: drop the oldest half.
            let mut starts: Vec<Instant> = self.entries.values().map(|e| e.last_failure).collect();
            starts.sort_unstable();
            let cut = starts[starts.len() / 2];
            self.entries.retain(|_, e| e.last_failure > cut);
        }
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.entries.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys(addr: &str, user: &str) -> Vec<Key> {
        vec![Key::Address(addr.into()), Key::Username(user.into())]
    }

    #[test]
    fn a_few_mistakes_are_free_then_locks_double() {
        let t0 = Instant::now();
        let mut t = LoginThrottle::default();
        let k = keys("10.0.0.1", "admin");
        for _ in 0..5 {
            assert_eq!(t.wait(t0, &k), None);
            t.failed(t0, &k);
        }
        assert_eq!(t.wait(t0, &k), None, "five failures are tolerated");
        t.failed(t0, &k);
        assert_eq!(t.wait(t0, &k), Some(Duration::from_secs(1)));
        let t1 = t0 + Duration::from_secs(1);
        assert_eq!(t.wait(t1, &k), None);
        t.failed(t1, &k);
        assert_eq!(t.wait(t1, &k), Some(Duration::from_secs(2)));
        let mut now = t1;
        for _ in 0..20 {
            now += t.wait(now, &k).unwrap_or_default();
            t.failed(now, &k);
        }
        assert_eq!(t.wait(now, &k), Some(MAX_LOCK), "the lock is capped");
    }

    #[test]
    fn success_clears_and_the_window_forgets() {
        let t0 = Instant::now();
        let mut t = LoginThrottle::default();
        let k = keys("10.0.0.1", "admin");
        for _ in 0..6 {
            t.failed(t0, &k);
        }
        assert!(t.wait(t0, &k).is_some());
        t.succeeded(&k);
        assert_eq!(t.wait(t0, &k), None);
        for _ in 0..5 {
            t.failed(t0, &k);
        }
        // Long after, the count starts again from zero.
        let later = t0 + WINDOW + Duration::from_secs(1);
        t.failed(later, &k);
        assert_eq!(t.wait(later, &k), None);
    }

    #[test]
    fn rotating_addresses_still_hits_the_username_budget() {
        let t0 = Instant::now();
        let mut t = LoginThrottle::default();
        for i in 0..20 {
            let k = keys(&format!("10.0.0.{i}"), "admin");
            assert_eq!(t.wait(t0, &k), None);
            t.failed(t0, &k);
        }
        let k = keys("10.0.1.1", "admin");
        t.failed(t0, &k);
        assert!(
            t.wait(t0, &k).is_some(),
            "21st failure on one username locks it"
        );
        // Another user from a fresh address is unaffected.
        assert_eq!(t.wait(t0, &keys("10.0.2.2", "ops")), None);
    }

    #[test]
    fn memory_is_bounded() {
        let t0 = Instant::now();
        let mut t = LoginThrottle::default();
        for i in 0..(MAX_KEYS as u32 + 100) {
            let now = t0 + Duration::from_millis(u64::from(i));
            t.failed(now, &[Key::Address(format!("a{i}"))]);
        }
        assert!(t.len() <= MAX_KEYS);
    }
}
