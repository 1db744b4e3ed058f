//! RTP port allocation from the `--rtp-ports` range.
//!
//! Ports are handed out in even numbers (RTP on N, RTCP on N+1 unless multiplexed, as RFC
//! 3550 suggests) round-robin, so a port just released is not reused at once: late packets
//! of the old call must not land in a new one.
//!
//! Another program may hold ports of the range. A [`PortReserver`], given by the IO shell,
//! binds each pair as it is handed out: pairs it cannot bind are passed over before their
//! number goes into an SDP, and the pair it holds is the one the media leg uses — a call
//! never fails on a port someone else took, even one taken a moment later.

use std::collections::BTreeSet;
use std::ops::RangeInclusive;
use std::sync::Arc;

/// Holds the pairs of the range that are handed out. The server's binds their sockets;
/// tests have none (every port is free).
pub trait PortReserver: Send + Sync + std::fmt::Debug {
    /// Holds the pair (port, port + 1); false when another program holds either.
    fn reserve(&self, port: u16) -> bool;
    /// The pair came back: whatever is still held for it is let go.
    fn release(&self, port: u16);
}

/// RTP ports handed out in pairs (RTP, RTCP) from a range, each at most once.
#[derive(Debug, Clone)]
pub struct PortPool {
    first: u16,
    last: u16,
    next: u16,
    in_use: BTreeSet<u16>,
    reserver: Option<Arc<dyn PortReserver>>,
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
            reserver: None,
            taken_elsewhere: 0,
        }
    }

    /// Holds each pair handed out with `reserver`, passing over those it cannot hold.
    #[must_use]
    pub fn with_reserver(mut self, reserver: Option<Arc<dyn PortReserver>>) -> Self {
        self.reserver = reserver;
        self
    }

    /// The next free even port (free here, and held by the reserver if there is one), or
    /// `None` when every pair is taken.
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
            if self.reserver.as_ref().is_some_and(|r| !r.reserve(port)) {
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
        if let Some(r) = &self.reserver {
            r.release(port);
        }
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

    /// Another program holds some pairs; what is handed out is held, and let go on return.
    #[derive(Debug, Default)]
    struct Reserver {
        elsewhere: Vec<u16>,
        held: std::sync::Mutex<Vec<u16>>,
    }

    impl PortReserver for Reserver {
        fn reserve(&self, port: u16) -> bool {
            let free = !self.elsewhere.contains(&port);
            if free {
                self.held.lock().unwrap().push(port);
            }
            free
        }

        fn release(&self, port: u16) {
            self.held.lock().unwrap().retain(|&p| p != port);
        }
    }

    #[test]
    fn pairs_another_program_holds_are_passed_over() {
        let reserver = Arc::new(Reserver {
            elsewhere: vec![10002, 10006],
            ..Reserver::default()
        });
        let mut p = PortPool::new(10001..=10010).with_reserver(Some(reserver.clone()));
        assert_eq!(p.allocate(), Some(10004));
        assert_eq!(p.allocate(), Some(10008));
        assert_eq!(p.allocate(), None, "the rest is held elsewhere");
        assert_eq!(p.in_use(), 2);
        assert_eq!(p.taken_elsewhere(), 4);
        assert_eq!(*reserver.held.lock().unwrap(), [10004, 10008]);
        p.release(10004);
        assert_eq!(
            *reserver.held.lock().unwrap(),
            [10008],
            "a returned pair is let go"
        );
    }

    #[test]
    fn released_port_is_not_reused_at_once() {
        let mut p = PortPool::new(20000..=20009);
        let a = p.allocate().unwrap();
        p.release(a);
        assert_ne!(p.allocate(), Some(a));
    }
}
