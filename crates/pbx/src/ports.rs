//! RTP port allocation from the `--rtp-ports` range.
//!
//! Ports are handed out in even numbers (RTP on N, RTCP on N+1 unless multiplexed, as RFC
//! 3550 suggests) round-robin, so a port just released is not reused at once: late packets
//! of the old call must not land in a new one.
//!
//! Another program may hold ports of the range. A [`PortProbe`], given by the IO shell,
//! says whether a pair can be bound; pairs that cannot are passed over, before their number
//! goes into an SDP — a call never fails on a port someone else took.

use std::collections::BTreeSet;
use std::ops::RangeInclusive;
use std::sync::Arc;

/// Whether the pair (N, N+1) can be bound now. The server's probe tries; tests have none
/// (every port is free).
#[derive(Clone)]
pub struct PortProbe(Arc<dyn Fn(u16) -> bool + Send + Sync>);

impl PortProbe {
    /// A probe asking `bindable` about each even port.
    pub fn new(bindable: impl Fn(u16) -> bool + Send + Sync + 'static) -> Self {
        PortProbe(Arc::new(bindable))
    }
}

impl std::fmt::Debug for PortProbe {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("PortProbe")
    }
}

/// RTP ports handed out in pairs (RTP, RTCP) from a range, each at most once.
#[derive(Debug, Clone)]
pub struct PortPool {
    first: u16,
    last: u16,
    next: u16,
    in_use: BTreeSet<u16>,
    probe: Option<PortProbe>,
    /// Pairs passed over because something else held them, since start.
    taken_elsewhere: u64,
}

impl PortPool {
    /// The whole range, first pair first.
    pub fn new(range: RangeInclusive<u16>) -> Self {
        Self::starting_at(range, 0)
    }

    /// Starts handing out at pair number `offset` (modulo the range), so that ports are
    /// not predictable and two servers sharing a range do not collide from the first call.
    pub fn starting_at(range: RangeInclusive<u16>, offset: u32) -> Self {
        let first = range.start().saturating_add(range.start() % 2);
        // Room for N+1 (RTCP) inside the range.
        let last = range.end().saturating_sub(1);
        let pairs = if first <= last {
            u32::from((last - first) / 2 + 1)
        } else {
            1
        };
        let next = u32::from(first) + 2 * (offset % pairs);
        Self {
            first,
            last,
            next: u16::try_from(next).unwrap_or(first),
            in_use: BTreeSet::new(),
            probe: None,
            taken_elsewhere: 0,
        }
    }

    /// Passes over pairs `probe` says cannot be bound.
    #[must_use]
    pub fn with_probe(mut self, probe: Option<PortProbe>) -> Self {
        self.probe = probe;
        self
    }

    /// The next free even port (free here, and bindable by the probe's word), or `None`
    /// when every pair is taken.
    pub fn allocate(&mut self) -> Option<u16> {
        if self.first > self.last {
            return None;
        }
        let pairs = (self.last - self.first) / 2 + 1;
        for _ in 0..pairs {
            let port = self.next;
            self.next = match port.checked_add(2) {
                Some(n) if n <= self.last => n,
                _ => self.first,
            };
            if self.in_use.contains(&port) {
                continue;
            }
            if self.probe.as_ref().is_some_and(|p| !(p.0)(port)) {
                self.taken_elsewhere += 1;
                tracing::warn!(port, "RTP port held by another program; taking the next");
                continue;
            }
            self.in_use.insert(port);
            return Some(port);
        }
        None
    }

    /// Pairs passed over because another program held them, since start.
    pub fn taken_elsewhere(&self) -> u64 {
        self.taken_elsewhere
    }

    /// Gives `port` back.
    pub fn release(&mut self, port: u16) {
        self.in_use.remove(&port);
    }

    /// Ports held.
    pub fn in_use(&self) -> usize {
        self.in_use.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn even_ports_round_robin_and_exhaustion() {
        let mut p = PortPool::new(10001..=10008);
        assert_eq!(p.allocate(), Some(10002));
        assert_eq!(p.allocate(), Some(10004));
        assert_eq!(p.allocate(), Some(10006));
        assert_eq!(p.allocate(), None, "10008 has no room for RTCP");
        p.release(10002);
        assert_eq!(p.allocate(), Some(10002));
        assert_eq!(p.in_use(), 3);
    }

    #[test]
    fn offset_start_wraps_around() {
        let mut p = PortPool::starting_at(10000..=10007, 3);
        assert_eq!(p.allocate(), Some(10006));
        assert_eq!(p.allocate(), Some(10000));
    }

    #[test]
    fn pairs_another_program_holds_are_passed_over() {
        let held = [10002u16, 10006];
        let probe = PortProbe::new(move |port| !held.contains(&port));
        let mut p = PortPool::new(10001..=10010).with_probe(Some(probe));
        assert_eq!(p.allocate(), Some(10004));
        assert_eq!(p.allocate(), Some(10008));
        assert_eq!(p.allocate(), None, "the rest is held elsewhere");
        assert_eq!(p.in_use(), 2);
        assert_eq!(p.taken_elsewhere(), 4);
    }

    #[test]
    fn released_port_is_not_reused_at_once() {
        let mut p = PortPool::new(20000..=20009);
        let a = p.allocate().unwrap();
        p.release(a);
        assert_ne!(p.allocate(), Some(a));
    }
}
