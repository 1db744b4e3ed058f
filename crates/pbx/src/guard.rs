//! Slows down whoever guesses a secret — a SIP password, a room's access code, a console
//! password — so that neither one address nor many get anywhere in useful time, while the
//! people who know the secret keep working.
//!
//! A guess has a *source* (an address, or a caller's number) and a *target* (a user, a
//! room). Failures are counted three ways, each with its own [`Limit`]: per (source,
//! target) pair, per source across targets (one address trying many), and per target
//! across sources (many addresses trying one). Within a limit, a few failures are free
//! (people mistype), then each further guess must wait a delay that doubles, and a budget
//! of failures per period is a hard ceiling: past it the key is refused until the oldest
//! failure of the period ages out. So the rate a guesser gets is bounded by the budget
//! whatever the parallelism.
//!
//! A pair that succeeded recently is *trusted*: its own pair limit still applies, but the
//! source and target limits do not. That is what keeps a user's own phones, and colleagues
//! behind the same NAT as an attacker, working while their account or address is under
//! attack: an attacker is never trusted, since trust takes the secret.
//!
//! Pure state with time passed in, tested without sleeping. Memory is bounded: each table
//! keeps at most a fixed number of keys, forgetting the stalest first.

use std::collections::{HashMap, VecDeque};
use std::hash::Hash;
use std::time::{Duration, Instant};

/// One way of counting failures.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limit {
    /// Failures within `period` that cost nothing.
    pub free: u32,
    /// Failures within `period` after which the key is refused.
    pub budget: u32,
    /// The window failures are counted over.
    pub period: Duration,
    /// The wait after the first failure beyond `free`; it doubles with each further one.
    pub first_delay: Duration,
    /// The longest wait between two guesses.
    pub max_delay: Duration,
}

impl Limit {
    /// The wait imposed after `n` failures in the period (0 while they are free).
    fn delay_after(&self, n: u32) -> Duration {
        if n < self.free.max(1) {
            return Duration::ZERO;
        }
        let doublings = (n - self.free.max(1)).min(20);
        self.first_delay
            .saturating_mul(1 << doublings)
            .min(self.max_delay)
    }
}

/// What a guess may do now.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Go ahead and check it.
    Go,
    /// Not yet: this long before the next guess is looked at.
    Wait(Duration),
    /// The budget is spent: nothing is looked at for this long.
    Refused(Duration),
}

impl Verdict {
    /// How long until a guess may be checked (zero for [`Verdict::Go`]).
    #[must_use]
    pub fn retry_after(self) -> Duration {
        match self {
            Verdict::Go => Duration::ZERO,
            Verdict::Wait(d) | Verdict::Refused(d) => d,
        }
    }

    /// The stricter of two verdicts.
    fn max(self, other: Verdict) -> Verdict {
        match (self, other) {
            (Verdict::Refused(a), Verdict::Refused(b)) => Verdict::Refused(a.max(b)),
            (Verdict::Refused(a), _) | (_, Verdict::Refused(a)) => Verdict::Refused(a),
            (Verdict::Wait(a), Verdict::Wait(b)) => Verdict::Wait(a.max(b)),
            (Verdict::Wait(a), Verdict::Go) | (Verdict::Go, Verdict::Wait(a)) => Verdict::Wait(a),
            (Verdict::Go, Verdict::Go) => Verdict::Go,
        }
    }
}

/// Failure times of one key, in seconds since the guard's epoch (4 bytes each: a table of
/// ten thousand keys at a budget of 100 stays under 5 MB).
#[derive(Debug, Default)]
struct Failures {
    times: VecDeque<u32>,
}

/// Failures per key under one limit.
#[derive(Debug)]
struct Table<K> {
    limit: Limit,
    keys: HashMap<K, Failures>,
    cap: usize,
}

impl<K: Hash + Eq + Clone> Table<K> {
    fn new(limit: Limit, cap: usize) -> Self {
        Table {
            limit,
            keys: HashMap::new(),
            cap: cap.max(2),
        }
    }

    fn period_secs(&self) -> u32 {
        u32::try_from(self.limit.period.as_secs()).unwrap_or(u32::MAX)
    }

    fn prune(limit_secs: u32, f: &mut Failures, now: u32) {
        while f.times.front().is_some_and(|t| now - t >= limit_secs) {
            f.times.pop_front();
        }
    }

    fn verdict(&mut self, now: u32, key: &K) -> Verdict {
        let period = self.period_secs();
        let Some(f) = self.keys.get_mut(key) else {
            return Verdict::Go;
        };
        Self::prune(period, f, now);
        let n = u32::try_from(f.times.len()).unwrap_or(u32::MAX);
        if n >= self.limit.budget {
            let oldest = f.times.front().copied().unwrap_or(now);
            return Verdict::Refused(secs(oldest + period - now));
        }
        let delay = self.limit.delay_after(n);
        let last = f.times.back().copied().unwrap_or(now);
        let ready_at = Duration::from_secs(u64::from(last)) + delay;
        let now_d = Duration::from_secs(u64::from(now));
        if delay > Duration::ZERO && ready_at > now_d {
            Verdict::Wait(ready_at - now_d)
        } else {
            Verdict::Go
        }
    }

    fn fail(&mut self, now: u32, key: &K) {
        if !self.keys.contains_key(key) && self.keys.len() >= self.cap {
            self.forget_stalest(now);
        }
        let period = self.period_secs();
        let budget = self.limit.budget.max(1) as usize;
        let f = self.keys.entry(key.clone()).or_default();
        Self::prune(period, f, now);
        if f.times.len() >= budget {
            f.times.pop_front();
        }
        f.times.push_back(now);
    }

    fn count(&mut self, now: u32, key: &K) -> u32 {
        let period = self.period_secs();
        self.keys.get_mut(key).map_or(0, |f| {
            Self::prune(period, f, now);
            u32::try_from(f.times.len()).unwrap_or(u32::MAX)
        })
    }

    fn clear(&mut self, key: &K) {
        self.keys.remove(key);
    }

    /// Makes room: keys with nothing left in their period go, then the half whose last
    /// failure is oldest.
    fn forget_stalest(&mut self, now: u32) {
        let period = self.period_secs();
        self.keys
            .retain(|_, f| f.times.back().is_some_and(|t| now - t < period));
        if self.keys.len() >= self.cap {
            let mut lasts: Vec<u32> = self
                .keys
                .values()
                .filter_map(|f| f.times.back().copied())
                .collect();
            lasts.sort_unstable();
            let cut = lasts[lasts.len() / 2];
            self.keys
                .retain(|_, f| f.times.back().is_some_and(|t| *t > cut));
        }
    }
}

fn secs(s: u32) -> Duration {
    Duration::from_secs(u64::from(s.max(1)))
}

/// The limits of one kind of secret.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Policy {
    /// Per (source, target): one address guessing one secret.
    pub pair: Limit,
    /// Per source across targets; `None` to count only pairs and targets.
    pub source: Option<Limit>,
    /// Per target across sources: a crowd guessing one secret.
    pub target: Limit,
    /// How long a success keeps its pair trusted.
    pub trust_for: Duration,
    /// Keys kept at most per table.
    pub cap: usize,
}

/// Failure counts for one kind of secret; see the module documentation.
#[derive(Debug)]
pub struct Guard<S, T> {
    epoch: Instant,
    pairs: Table<(S, T)>,
    sources: Option<Table<S>>,
    targets: Table<T>,
    trusted: HashMap<(S, T), u32>,
    trust_for: u32,
    cap: usize,
}

impl<S: Hash + Eq + Clone, T: Hash + Eq + Clone> Guard<S, T> {
    /// A guard whose clock starts at `epoch`.
    #[must_use]
    pub fn new(policy: Policy, epoch: Instant) -> Self {
        Guard {
            epoch,
            pairs: Table::new(policy.pair, policy.cap),
            sources: policy.source.map(|l| Table::new(l, policy.cap)),
            targets: Table::new(policy.target, policy.cap),
            trusted: HashMap::new(),
            trust_for: u32::try_from(policy.trust_for.as_secs()).unwrap_or(u32::MAX),
            cap: policy.cap.max(2),
        }
    }

    fn now(&self, now: Instant) -> u32 {
        u32::try_from(now.saturating_duration_since(self.epoch).as_secs()).unwrap_or(u32::MAX)
    }

    fn is_trusted(&self, now: u32, pair: &(S, T)) -> bool {
        self.trusted.get(pair).is_some_and(|until| *until > now)
    }

    /// Whether a guess by `source` at `target` may be checked now.
    pub fn check(&mut self, now: Instant, source: &S, target: &T) -> Verdict {
        let now = self.now(now);
        let pair = (source.clone(), target.clone());
        let mut verdict = self.pairs.verdict(now, &pair);
        if !self.is_trusted(now, &pair) {
            if let Some(sources) = self.sources.as_mut() {
                verdict = verdict.max(sources.verdict(now, source));
            }
            verdict = verdict.max(self.targets.verdict(now, target));
        }
        verdict
    }

    /// A wrong guess.
    pub fn failed(&mut self, now: Instant, source: &S, target: &T) {
        let now = self.now(now);
        let pair = (source.clone(), target.clone());
        self.pairs.fail(now, &pair);
        if !self.is_trusted(now, &pair) {
            if let Some(sources) = self.sources.as_mut() {
                sources.fail(now, source);
            }
            self.targets.fail(now, target);
        }
    }

    /// A right guess: the pair's failures are forgotten and the pair trusted.
    pub fn succeeded(&mut self, now: Instant, source: &S, target: &T) {
        let now = self.now(now);
        let pair = (source.clone(), target.clone());
        self.pairs.clear(&pair);
        if !self.trusted.contains_key(&pair) && self.trusted.len() >= self.cap {
            self.trusted.retain(|_, until| *until > now);
            if self.trusted.len() >= self.cap {
                // Still full of live trust: the soonest to end goes first.
                let mut ends: Vec<u32> = self.trusted.values().copied().collect();
                ends.sort_unstable();
                let cut = ends[ends.len() / 2];
                self.trusted.retain(|_, until| *until > cut);
            }
        }
        self.trusted
            .insert(pair, now.saturating_add(self.trust_for));
    }

    /// Failures counted against `target` in its period (for alerts).
    pub fn target_failures(&mut self, now: Instant, target: &T) -> u32 {
        let now = self.now(now);
        self.targets.count(now, target)
    }

    /// Keys held, all tables together (for tests and metrics).
    #[must_use]
    pub fn len(&self) -> usize {
        self.pairs.keys.len()
            + self.sources.as_ref().map_or(0, |s| s.keys.len())
            + self.targets.keys.len()
            + self.trusted.len()
    }

    /// Whether nothing is held.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIN: Duration = Duration::from_secs(60);
    const HOUR: Duration = Duration::from_secs(3600);

    fn policy() -> Policy {
        Policy {
            pair: Limit {
                free: 3,
                budget: 30,
                period: HOUR,
                first_delay: Duration::from_secs(5),
                max_delay: 2 * MIN,
            },
            source: Some(Limit {
                free: 10,
                budget: 60,
                period: HOUR,
                first_delay: Duration::from_secs(1),
                max_delay: MIN,
            }),
            target: Limit {
                free: 50,
                budget: 300,
                period: HOUR,
                first_delay: Duration::from_secs(1),
                max_delay: Duration::from_secs(10),
            },
            trust_for: 7 * 24 * HOUR,
            cap: 1000,
        }
    }

    /// Guesses as fast as the guard allows from `sources` in turn at `target` for `span`;
    /// returns how many were checked.
    fn guess_for(
        g: &mut Guard<String, i64>,
        t0: Instant,
        span: Duration,
        sources: &[String],
        target: i64,
    ) -> u32 {
        let mut checked = 0;
        let mut now = t0;
        while now < t0 + span {
            let mut any = false;
            for s in sources {
                if g.check(now, s, &target) == Verdict::Go {
                    g.failed(now, s, &target);
                    checked += 1;
                    any = true;
                }
            }
            if !any {
                now += Duration::from_secs(1);
            }
        }
        checked
    }

    #[test]
    fn a_few_are_free_then_waits_double_then_the_budget_refuses() {
        let t0 = Instant::now();
        let mut g = Guard::new(policy(), t0);
        let (s, r) = ("10.0.0.1".to_string(), 800i64);
        for _ in 0..3 {
            assert_eq!(g.check(t0, &s, &r), Verdict::Go);
            g.failed(t0, &s, &r);
        }
        assert_eq!(g.check(t0, &s, &r), Verdict::Wait(Duration::from_secs(5)));
        let t1 = t0 + Duration::from_secs(5);
        assert_eq!(g.check(t1, &s, &r), Verdict::Go);
        g.failed(t1, &s, &r);
        assert_eq!(g.check(t1, &s, &r), Verdict::Wait(Duration::from_secs(10)));
        // Flat out for an hour: never more than the budget.
        let checked = 4 + guess_for(
            &mut g,
            t1,
            HOUR - Duration::from_secs(5),
            std::slice::from_ref(&s),
            r,
        );
        assert!(checked <= 30, "{checked}");
        assert!(matches!(
            g.check(t0 + HOUR - Duration::from_secs(1), &s, &r),
            Verdict::Refused(_) | Verdict::Wait(_)
        ));
        // Another caller is unaffected.
        assert_eq!(g.check(t1, &"10.0.0.2".to_string(), &r), Verdict::Go);
    }

    #[test]
    fn many_sources_together_stay_within_the_targets_budget() {
        let t0 = Instant::now();
        let mut g = Guard::new(policy(), t0);
        let sources: Vec<String> = (0..50).map(|i| format!("10.0.1.{i}")).collect();
        let checked = guess_for(&mut g, t0, HOUR, &sources, 800);
        assert!(checked <= 300, "{checked} guesses in an hour");
        assert!(
            checked > 100,
            "{checked}: the limits should not be far stricter than stated"
        );
        assert!(g.target_failures(t0 + HOUR - Duration::from_secs(1), &800) >= 100);
        // Over two hours the rate holds.
        let more = guess_for(&mut g, t0 + HOUR, HOUR, &sources, 800);
        assert!(more <= 300, "{more}");
    }

    #[test]
    fn trusted_pairs_pass_while_their_target_is_under_attack() {
        let t0 = Instant::now();
        let mut g = Guard::new(policy(), t0);
        let (alice, room) = ("192.0.2.7".to_string(), 800i64);
        g.succeeded(t0, &alice, &room);
        let sources: Vec<String> = (0..50).map(|i| format!("10.0.1.{i}")).collect();
        let _ = guess_for(&mut g, t0, HOUR, &sources, room);
        let now = t0 + HOUR - Duration::from_secs(1);
        let stranger = "203.0.113.1".to_string();
        assert_ne!(
            g.check(now, &stranger, &room),
            Verdict::Go,
            "the room is locked down"
        );
        assert_eq!(
            g.check(now, &alice, &room),
            Verdict::Go,
            "but not for Alice"
        );
        // Alice's own mistakes still count against her pair only.
        for _ in 0..3 {
            g.failed(now, &alice, &room);
        }
        assert!(matches!(g.check(now, &alice, &room), Verdict::Wait(_)));
        // A week on, trust has ended and the attack is forgotten.
        let later = t0 + 8 * 24 * HOUR;
        assert_eq!(g.check(later, &alice, &room), Verdict::Go);
        assert_eq!(g.check(later, &stranger, &room), Verdict::Go);
    }

    #[test]
    fn one_source_across_targets_hits_its_own_limit() {
        let t0 = Instant::now();
        let mut g = Guard::new(policy(), t0);
        let s = "10.9.9.9".to_string();
        let mut checked = 0;
        for room in 0..100i64 {
            for _ in 0..3 {
                if g.check(t0, &s, &room) == Verdict::Go {
                    g.failed(t0, &s, &room);
                    checked += 1;
                }
            }
        }
        assert_eq!(checked, 10, "free failures across rooms, then a wait");
        assert_eq!(g.check(t0, &"10.9.9.8".to_string(), &5), Verdict::Go);
    }

    #[test]
    fn memory_is_bounded() {
        let t0 = Instant::now();
        let mut g: Guard<String, i64> = Guard::new(policy(), t0);
        for i in 0..5000u64 {
            let now = t0 + Duration::from_millis(i * 10);
            g.failed(now, &format!("s{i}"), &(i as i64));
            g.succeeded(now, &format!("t{i}"), &(i as i64));
        }
        assert!(g.len() <= 4 * 1000, "{}", g.len());
    }
}
