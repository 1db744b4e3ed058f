//! Who a SIP request comes from: digest authentication with replay protection and limits
//! on password guessing, sans-IO (time passed in).
//!
//! A request's credentials pass when the nonce is ours, was issued to the address the
//! request comes from and is fresh, the digest matches the user's password, and that
//! (nonce, nonce-count) pair was never used before (see [`confero_sip::digest`]). Wrong
//! passwords are counted by [`Guard`] per (address, username), per address and per
//! username; a device that authenticated from an address stays trusted there, so an
//! attack on a user or from a shared address does not lock out its legitimate devices.
//! Unknown users and wrong passwords get the same answer, at the same cost.

use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use confero_sip::digest::{self, Admission, Algorithm, NonceCounts, NonceSource, NonceStatus};
use confero_sip::message::Request;

use crate::guard::{Guard, Limit, Policy, Verdict};

const HOUR: Duration = Duration::from_secs(3600);

/// How SIP password guessing is limited. The per-username budget is the one that matters
/// against a distributed attack: at most 100 wrong guesses a day per username from
/// addresses not trusted for it.
pub const SIP_PASSWORD_POLICY: Policy = Policy {
    pair: Limit {
        free: 5,
        budget: 20,
        period: HOUR,
        first_delay: Duration::from_secs(2),
        max_delay: Duration::from_secs(300),
    },
    source: Some(Limit {
        free: 20,
        budget: 100,
        period: HOUR,
        first_delay: Duration::from_secs(1),
        max_delay: Duration::from_secs(900),
    }),
    target: Limit {
        free: 10,
        budget: 100,
        period: Duration::from_secs(24 * 3600),
        first_delay: Duration::from_secs(2),
        max_delay: Duration::from_secs(900),
    },
    trust_for: Duration::from_secs(7 * 24 * 3600),
    cap: 20_000,
};

/// Nonces whose counts are remembered at most (a few hundred bytes each).
const MAX_NONCES: usize = 100_000;
/// Usernames longer than this are cut before they are counted (memory per key).
const MAX_USERNAME: usize = 64;

/// What to do with a request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Authenticated as this SIP username.
    Authenticated(String),
    /// Answer 401/407 with a fresh nonce; `stale` when the client's nonce was ours but is
    /// spent, so it retries without asking anyone for the password.
    Challenge {
        /// The nonce to send.
        nonce: String,
        /// The client's nonce was ours but spent.
        stale: bool,
    },
    /// Too many wrong passwords: refuse without looking at the credentials.
    Refused,
}

/// Digest authentication state of one engine; see the module documentation.
#[derive(Debug)]
pub struct Authenticator {
    realm: String,
    nonces: NonceSource,
    counts: NonceCounts,
    guard: Guard<IpAddr, String>,
    stats: AuthStats,
}

/// Authentication counters since start (for metrics).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct AuthStats {
    /// Wrong passwords (and unknown users).
    pub failures: u64,
    /// Requests refused unchecked for too many failures.
    pub refused: u64,
    /// Right answers whose nonce-count was spent (replays, or clients reusing counts).
    pub replays: u64,
}

impl Authenticator {
    /// `now` and `now_unix` name the same moment; nonces issued before it (by an earlier
    /// run sharing the secret) are stale. Later calls pass the Unix time of their instant.
    #[must_use]
    pub fn new(
        realm: String,
        secret: [u8; 32],
        lifetime: Duration,
        now: Instant,
        now_unix: u64,
    ) -> Self {
        Authenticator {
            realm,
            nonces: NonceSource::new(secret, lifetime),
            counts: NonceCounts::new(now_unix, lifetime, MAX_NONCES),
            guard: Guard::new(SIP_PASSWORD_POLICY, now),
            stats: AuthStats::default(),
        }
    }

    /// Authenticates `req` from `from` by its `Authorization` (or `Proxy-Authorization`
    /// when `proxy`), looking passwords up by SIP username with `password_of`; `unix` is
    /// `now` in Unix seconds.
    pub fn authenticate<'p>(
        &mut self,
        now: Instant,
        unix: u64,
        req: &Request,
        from: SocketAddr,
        proxy: bool,
        password_of: impl Fn(&str) -> Option<&'p str>,
    ) -> Outcome {
        let mut stale = false;
        if let Some(creds) = digest::credentials_from(req, proxy) {
            let username: String = creds.username.chars().take(MAX_USERNAME).collect();
            let verdict = self.guard.check(now, &from.ip(), &username);
            if verdict != Verdict::Go {
                self.stats.refused += 1;
                return Outcome::Refused;
            }
            match self.nonces.check(&creds.nonce, unix, from) {
                NonceStatus::Valid if creds.realm == self.realm => {
                    let password = password_of(&creds.username);
                    // A digest even for unknown users, so both paths cost the same.
                    let ok = digest::verify(
                        &creds,
                        &req.method.to_string(),
                        password.unwrap_or("\u{0}unknown"),
                    );
                    if ok && password.is_some() {
                        match self.counts.admit(&creds, unix) {
                            Admission::Fresh => {
                                self.guard.succeeded(now, &from.ip(), &username);
                                return Outcome::Authenticated(creds.username);
                            }
                            // A replay, or a client reusing a count: a new nonce does.
                            Admission::Replayed => {
                                self.stats.replays += 1;
                                stale = true;
                            }
                        }
                    } else {
                        self.stats.failures += 1;
                        self.guard.failed(now, &from.ip(), &username);
                    }
                }
                NonceStatus::Stale => stale = true,
                _ => {}
            }
        }
        Outcome::Challenge {
            nonce: self.nonces.issue(unix, from),
            stale,
        }
    }

    /// The `WWW-Authenticate`/`Proxy-Authenticate` values for a challenge.
    #[must_use]
    pub fn challenges(&self, nonce: &str, stale: bool, algorithms: &[Algorithm]) -> Vec<String> {
        digest::challenges(&self.realm, nonce, stale, algorithms)
    }

    /// Counters since start.
    #[must_use]
    pub fn stats(&self) -> AuthStats {
        self.stats
    }
}
