//! Slows password guessing on the console sign-in page and on HTTP Basic API calls, with
//! the same guard as SIP passwords and access codes ([`confero_pbx::guard`]).
//!
//! Failures count per (address, account), per address and per account. An address limit
//! comes first and is strict (one address guessing gets nowhere); the per-account limit
//! only slows down — waits doubling to a minute — so that a crowd of addresses guessing
//! the admin's password cannot lock the admin out, and an address the account signed in
//! from before is not held back by others' guessing at all.

use std::time::{Duration, Instant};

use confero_pbx::guard::{Guard, Limit, Policy, Verdict};

const HOUR: Duration = Duration::from_secs(3600);

/// The console's limits: per address and account, 5 free then doubling from 1 s to
/// 15 min, 30 an hour; per address across accounts, 10 free and 60 an hour; per
/// account from untrusted addresses, 20 free then at most one a minute, 500 a day.
pub(crate) const CONSOLE_POLICY: Policy = Policy {
    pair: Limit {
        free: 5,
        budget: 30,
        period: HOUR,
        first_delay: Duration::from_secs(1),
        max_delay: Duration::from_secs(900),
    },
    source: Some(Limit {
        free: 10,
        budget: 60,
        period: HOUR,
        first_delay: Duration::from_secs(1),
        max_delay: Duration::from_secs(900),
    }),
    target: Limit {
        free: 20,
        budget: 500,
        period: Duration::from_secs(24 * 3600),
        first_delay: Duration::from_secs(1),
        max_delay: Duration::from_secs(60),
    },
    trust_for: Duration::from_secs(30 * 24 * 3600),
    cap: 20_000,
};

/// Failed sign-ins, console and HTTP Basic together.
#[derive(Debug)]
pub(crate) struct LoginThrottle {
    guard: Guard<String, String>,
}

impl Default for LoginThrottle {
    fn default() -> Self {
        Self::starting(Instant::now())
    }
}

/// Who is signing in: the client's address and the account name (lower-cased).
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Attempt {
    pub(crate) address: String,
    pub(crate) username: String,
}

impl Attempt {
    pub(crate) fn new(address: String, username: &str) -> Self {
        Attempt {
            address,
            username: username.chars().take(64).collect::<String>().to_lowercase(),
        }
    }
}

impl LoginThrottle {
    /// A throttle whose clock starts at `now`.
    pub(crate) fn starting(now: Instant) -> Self {
        LoginThrottle {
            guard: Guard::new(CONSOLE_POLICY, now),
        }
    }

    /// How long the caller must wait before a password is looked at, if at all.
    pub(crate) fn wait(&mut self, now: Instant, a: &Attempt) -> Option<Duration> {
        match self.guard.check(now, &a.address, &a.username) {
            Verdict::Go => None,
            v => Some(v.retry_after().max(Duration::from_secs(1))),
        }
    }

    pub(crate) fn failed(&mut self, now: Instant, a: &Attempt) {
        self.guard.failed(now, &a.address, &a.username);
    }

    pub(crate) fn succeeded(&mut self, now: Instant, a: &Attempt) {
        self.guard.succeeded(now, &a.address, &a.username);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn attempt(addr: &str, user: &str) -> Attempt {
        Attempt::new(addr.into(), user)
    }

    #[test]
    fn a_few_mistakes_are_free_then_waits_double() {
        let t0 = Instant::now();
        let mut t = LoginThrottle::starting(t0);
        let a = attempt("10.0.0.1", "admin");
        for _ in 0..5 {
            assert_eq!(t.wait(t0, &a), None);
            t.failed(t0, &a);
        }
        assert_eq!(t.wait(t0, &a), Some(Duration::from_secs(1)));
        let t1 = t0 + Duration::from_secs(1);
        assert_eq!(t.wait(t1, &a), None);
        t.failed(t1, &a);
        assert_eq!(t.wait(t1, &a), Some(Duration::from_secs(2)));
    }

    #[test]
    fn a_crowd_of_addresses_cannot_lock_the_admin_out() {
        let t0 = Instant::now();
        let mut t = LoginThrottle::starting(t0);
        let home = attempt("192.0.2.1", "Admin");
        t.succeeded(t0, &home);
        // 25 wrong sign-ins from 25 addresses, then an hour of one a second from 100.
        let mut now = t0;
        for i in 0..25 {
            let a = attempt(&format!("10.0.0.{i}"), "admin");
            if t.wait(now, &a).is_none() {
                t.failed(now, &a);
            }
        }
        assert_eq!(t.wait(now, &home), None, "the admin's own address");
        let stranger_admin = attempt("198.51.100.9", "admin");
        let wait = t.wait(now, &stranger_admin).unwrap_or_default();
        assert!(
            wait <= Duration::from_secs(60),
            "a new address waits at most a minute: {wait:?}"
        );
        for s in 0..3600u32 {
            now = t0 + Duration::from_secs(u64::from(s));
            let a = attempt(&format!("10.1.{}.{}", s % 100 / 10, s % 10), "admin");
            if t.wait(now, &a).is_none() {
                t.failed(now, &a);
            }
        }
        assert_eq!(t.wait(now, &home), None);
        // Another account is not touched.
        assert_eq!(t.wait(now, &attempt("198.51.100.9", "ops")), None);
    }
}
