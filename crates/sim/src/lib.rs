//! A seeded simulated network for the sans-IO cores' tests, and a driver that steps a
//! simulation to its earliest wake-up and fails on livelock.
//!
//! The cores (the SIP engine, the media bridge) take datagrams and time in and give
//! datagrams and a next wake-up out. A test wires them together through a [`SimNet`]:
//! everything one side transmits goes into the network, which loses, delays, reorders and
//! duplicates it as its [`Link`] says, drawing every choice from one seeded [`Rng`], then
//! hands it to the other side when it is due. A [`Driver`] moves the virtual clock to the
//! earliest of everyone's wake-ups. The same seed gives the same run, to the datagram; a
//! failing seed is printed, and replays.
//!
//! ```text
//! loop {
//!     let now = driver.step([core.poll_timeout(), net.next_delivery()])?;
//!     while let Some(d) = net.deliver(now) { core.handle_datagram(now, d...) }
//!     core.handle_timeout(now);
//!     while let Some(t) = core.poll_transmit() { net.send(now, t...) }
//! }
//! ```

#![warn(missing_docs)]

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

/// splitmix64: small, fast, and every seed (0 included) gives a well-spread sequence.
#[derive(Clone, Debug)]
pub struct Rng(u64);

impl Rng {
    /// The sequence of `seed`.
    pub fn new(seed: u64) -> Rng {
        Rng(seed)
    }

    /// The next number of the sequence.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in [0, 1).
    pub fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }

    /// True with probability `p`.
    pub fn chance(&mut self, p: f64) -> bool {
        p > 0.0 && self.unit() < p
    }

    /// Uniform in [0, `max`].
    pub fn up_to(&mut self, max: Duration) -> Duration {
        max.mul_f64(self.unit())
    }
}

/// How a path treats datagrams.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Link {
    /// Probability that a datagram is lost.
    pub loss: f64,
    /// Probability that a datagram arrives twice (the copy with its own delay).
    pub duplicate: f64,
    /// The least time a datagram takes.
    pub delay: Duration,
    /// Each datagram takes up to this much longer, uniformly: more than the gap between
    /// two datagrams reorders them.
    pub jitter: Duration,
}

impl Link {
    /// Delivers everything at once, in order.
    pub const PERFECT: Link = Link {
        loss: 0.0,
        duplicate: 0.0,
        delay: Duration::ZERO,
        jitter: Duration::ZERO,
    };

    /// A path of `delay` that loses and duplicates nothing and keeps order.
    pub fn delay(delay: Duration) -> Link {
        Link {
            delay,
            ..Link::PERFECT
        }
    }
}

/// A datagram on its way. (Ordered only so that it can sit in the heap: the send order
/// before it is unique.)
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Datagram {
    /// Who sent it.
    pub from: SocketAddr,
    /// Who it is for.
    pub to: SocketAddr,
    /// Its bytes.
    pub data: Vec<u8>,
}

/// What the network did, for a test to check that its conditions really happened.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NetStats {
    /// Datagrams handed to the network.
    pub sent: u64,
    /// Of them, dropped.
    pub lost: u64,
    /// Of them, delivered twice.
    pub duplicated: u64,
    /// Deliveries (duplicates counted).
    pub delivered: u64,
    /// Delivered before a datagram of the same path sent earlier.
    pub reordered: u64,
    /// A hash of every datagram sent (addresses and bytes, in order): two runs that sent
    /// the same things in the same order have the same fingerprint.
    pub fingerprint: u64,
}

/// See the [crate documentation](crate).
#[derive(Debug)]
pub struct SimNet {
    rng: Rng,
    link: Link,
    /// Paths (from, to) that behave otherwise than `link`.
    paths: HashMap<(SocketAddr, SocketAddr), Link>,
    /// (due, order sent, path sequence number, datagram), earliest first.
    in_flight: BinaryHeap<Reverse<(Instant, u64, u64, Datagram)>>,
    sent: u64,
    /// Per path: the next sequence number, and the highest delivered.
    path_seq: HashMap<(SocketAddr, SocketAddr), (u64, Option<u64>)>,
    stats: NetStats,
}

impl SimNet {
    /// A network where every path is `link`, its choices drawn from `seed`.
    pub fn new(seed: u64, link: Link) -> SimNet {
        SimNet {
            rng: Rng::new(seed),
            link,
            paths: HashMap::new(),
            in_flight: BinaryHeap::new(),
            sent: 0,
            path_seq: HashMap::new(),
            stats: NetStats::default(),
        }
    }

    /// Datagrams from `from` to `to` go through `link` from now on.
    pub fn set_path(&mut self, from: SocketAddr, to: SocketAddr, link: Link) {
        self.paths.insert((from, to), link);
    }

    /// What the network did so far.
    pub fn stats(&self) -> NetStats {
        self.stats
    }

    /// A datagram sent at `now`.
    pub fn send(&mut self, now: Instant, from: SocketAddr, to: SocketAddr, data: &[u8]) {
        self.stats.sent += 1;
        for addr in [from, to] {
            let ip = match addr.ip() {
                std::net::IpAddr::V4(v4) => v4.to_ipv6_mapped().octets(),
                std::net::IpAddr::V6(v6) => v6.octets(),
            };
            self.stats.fingerprint = fnv1a(self.stats.fingerprint, &ip);
            self.stats.fingerprint = fnv1a(self.stats.fingerprint, &addr.port().to_be_bytes());
        }
        self.stats.fingerprint = fnv1a(self.stats.fingerprint, data);
        let link = self.paths.get(&(from, to)).copied().unwrap_or(self.link);
        if self.rng.chance(link.loss) {
            self.stats.lost += 1;
            return;
        }
        let copies = if self.rng.chance(link.duplicate) {
            self.stats.duplicated += 1;
            2
        } else {
            1
        };
        let seq = {
            let s = &mut self.path_seq.entry((from, to)).or_insert((0, None)).0;
            *s += 1;
            *s
        };
        for _ in 0..copies {
            let due = now + link.delay + self.rng.up_to(link.jitter);
            self.sent += 1;
            self.in_flight.push(Reverse((
                due,
                self.sent,
                seq,
                Datagram {
                    from,
                    to,
                    data: data.to_vec(),
                },
            )));
        }
    }

    /// When the next datagram arrives.
    pub fn next_delivery(&self) -> Option<Instant> {
        self.in_flight.peek().map(|Reverse((due, ..))| *due)
    }

    /// The next datagram due at `now` or before.
    pub fn deliver(&mut self, now: Instant) -> Option<Datagram> {
        if self.next_delivery()? > now {
            return None;
        }
        let Reverse((_, _, seq, d)) = self.in_flight.pop()?;
        self.stats.delivered += 1;
        let highest = &mut self.path_seq.entry((d.from, d.to)).or_insert((0, None)).1;
        match highest {
            Some(h) if seq < *h => self.stats.reordered += 1,
            _ => *highest = Some(seq),
        }
        Some(d)
    }

    /// Datagrams still on their way.
    pub fn in_flight(&self) -> usize {
        self.in_flight.len()
    }
}

/// FNV-1a, continued from `hash` (start from 0).
fn fnv1a(hash: u64, bytes: &[u8]) -> u64 {
    let mut h = if hash == 0 {
        0xcbf2_9ce4_8422_2325
    } else {
        hash
    };
    for &b in bytes {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

/// A simulation that stopped making progress.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Livelock {
    /// Simulated time since the start when it was caught.
    pub at: Duration,
    /// Steps taken without time passing.
    pub steps: u32,
}

impl std::fmt::Display for Livelock {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "livelock: {} steps without time passing at {:?} of simulated time",
            self.steps, self.at
        )
    }
}

impl std::error::Error for Livelock {}

/// The virtual clock of a simulation, moved from wake-up to wake-up.
#[derive(Debug)]
pub struct Driver {
    start: Instant,
    now: Instant,
    /// Steps taken at `now` without time passing.
    spins: u32,
    max_spins: u32,
}

impl Driver {
    /// A clock at `start` that calls it a livelock when 10,000 steps in a row do not move
    /// it (cores asking to be woken now, again and again).
    pub fn new(start: Instant) -> Driver {
        Driver {
            start,
            now: start,
            spins: 0,
            max_spins: 10_000,
        }
    }

    /// The simulated time.
    pub fn now(&self) -> Instant {
        self.now
    }

    /// Simulated time since the start.
    pub fn elapsed(&self) -> Duration {
        self.now - self.start
    }

    /// Moves the clock to the earliest of `wakeups` (never backwards: a wake-up in the
    /// past is due now) and returns it; `None` when nobody wants to be woken.
    pub fn step(
        &mut self,
        wakeups: impl IntoIterator<Item = Option<Instant>>,
    ) -> Result<Option<Instant>, Livelock> {
        let Some(next) = wakeups.into_iter().flatten().min() else {
            return Ok(None);
        };
        if next > self.now {
            self.now = next;
            self.spins = 0;
        } else {
            self.spins += 1;
            if self.spins > self.max_spins {
                return Err(Livelock {
                    at: self.elapsed(),
                    steps: self.spins,
                });
            }
        }
        Ok(Some(self.now))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(port: u16) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], port))
    }

    fn run(seed: u64, link: Link, n: u64) -> (Vec<u64>, NetStats) {
        let t0 = Instant::now();
        let mut net = SimNet::new(seed, link);
        for i in 0..n {
            net.send(
                t0 + Duration::from_millis(20 * i),
                addr(1),
                addr(2),
                &i.to_be_bytes(),
            );
        }
        let mut got = Vec::new();
        while let Some(at) = net.next_delivery() {
            let d = net.deliver(at).unwrap();
            got.push(u64::from_be_bytes(d.data.try_into().unwrap()));
        }
        (got, net.stats())
    }

    #[test]
    fn perfect_link_delivers_everything_in_order() {
        let (got, stats) = run(1, Link::PERFECT, 100);
        assert_eq!(got, (0..100).collect::<Vec<_>>());
        assert_eq!(stats.reordered, 0);
        assert_eq!(stats.lost, 0);
    }

    #[test]
    fn a_bad_link_loses_duplicates_and_reorders_as_asked_and_replays_from_its_seed() {
        let bad = Link {
            loss: 0.2,
            duplicate: 0.05,
            delay: Duration::from_millis(30),
            jitter: Duration::from_millis(60),
        };
        let (got, stats) = run(7, bad, 2000);
        assert!((300..500).contains(&stats.lost), "{stats:?}");
        assert!((50..120).contains(&stats.duplicated), "{stats:?}");
        assert!(stats.reordered > 100, "{stats:?}");
        assert_eq!(stats.delivered, got.len() as u64);
        assert_eq!(got.len() as u64, 2000 - stats.lost + stats.duplicated);
        // Same seed, same run; another seed, another run.
        assert_eq!(run(7, bad, 2000).0, got);
        assert_ne!(run(8, bad, 2000).0, got);
    }

    #[test]
    fn nothing_arrives_before_its_time() {
        let t0 = Instant::now();
        let mut net = SimNet::new(3, Link::delay(Duration::from_millis(50)));
        net.send(t0, addr(1), addr(2), b"x");
        assert_eq!(net.deliver(t0 + Duration::from_millis(49)), None);
        assert!(net.deliver(t0 + Duration::from_millis(50)).is_some());
    }

    #[test]
    fn driver_goes_to_the_earliest_wakeup_and_catches_livelock() {
        let t0 = Instant::now();
        let mut d = Driver::new(t0);
        let later = t0 + Duration::from_millis(5);
        assert_eq!(
            d.step([Some(later), None, Some(t0 + Duration::from_secs(1))]),
            Ok(Some(later))
        );
        // A wake-up in the past is due now.
        assert_eq!(d.step([Some(t0)]), Ok(Some(later)));
        assert_eq!(d.step([None, None]), Ok(None));
        let err = (0..20_000).find_map(|_| d.step([Some(later)]).err());
        assert_eq!(err.map(|e| e.at), Some(Duration::from_millis(5)));
    }
}
