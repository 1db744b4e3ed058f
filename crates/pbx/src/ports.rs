//! RTP port allocation from the `--rtp-ports` range.
//!
//! Ports are handed out in even numbers (RTP on N, RTCP on N+1 unless multiplexed, as RFC
//! 3550 suggests) round-robin, so a port just released is not reused at once: late packets
//! of the old call must not land in a new one.

use std::collections::BTreeSet;
use std::ops::RangeInclusive;

/// RTP ports handed out in pairs (RTP, RTCP) from a range, each at most once.
#[derive(Debug, Clone)]
pub struct PortPool {
    first: u16,
    last: u16,
    next: u16,
    in_use: BTreeSet<u16>,
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
        }
    }

    /// The next free even port, or `None` when every pair is taken.
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
            if self.in_use.insert(port) {
                return Some(port);
            }
        }
        None
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
    fn released_port_is_not_reused_at_once() {
        let mut p = PortPool::new(20000..=20009);
        let a = p.allocate().unwrap();
        p.release(a);
        assert_ne!(p.allocate(), Some(a));
    }
}
