//! When each datagram arrived, by the kernel's clock (`SO_TIMESTAMPNS`), not when a loop
//! got round to reading it: a jitter buffer needs how the network spaced packets, and the
//! SIP task's overload guard needs how long requests waited.

use std::io::{ErrorKind, IoSliceMut};
use std::net::{SocketAddr, SocketAddrV4, SocketAddrV6};
use std::os::fd::{AsFd, AsRawFd};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use nix::sys::socket::{
    recvmsg, setsockopt, sockopt, ControlMessageOwned, MsgFlags, SockaddrStorage,
};

/// Room for the one control message [`recv_timestamped`] asks for.
pub(crate) fn cmsg_buffer() -> Vec<u8> {
    nix::cmsg_space!(nix::sys::time::TimeSpec)
}

/// Asks the kernel to stamp each datagram `socket` receives.
pub(crate) fn enable(socket: impl AsFd) -> nix::Result<()> {
    setsockopt(&socket, sockopt::ReceiveTimestampns, &true)
}

/// Turns the kernel's receive times (wall clock) into the monotonic clock the bridge keeps,
/// from one reading of both clocks per round of reads.
pub(crate) struct ArrivalClock {
    wall: Duration,
    now: Instant,
}

/// A receive time further back than this is not believed (the wall clock was stepped).
const MAX_RECEIVE_AGE: Duration = Duration::from_secs(1);

impl ArrivalClock {
    pub(crate) fn now() -> ArrivalClock {
        ArrivalClock {
            wall: SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .unwrap_or_default(),
            now: Instant::now(),
        }
    }

    /// When a datagram received at wall-clock time `at` arrived; now if unknown.
    pub(crate) fn arrival(&self, at: Option<Duration>) -> Instant {
        self.age(at)
            .and_then(|age| self.now.checked_sub(age))
            .unwrap_or(self.now)
    }

    /// How long a datagram received at `at` had waited when this clock was read, if the
    /// kernel said and the answer is believable; one received after the reading waited 0.
    pub(crate) fn age(&self, at: Option<Duration>) -> Option<Duration> {
        Some(self.wall.saturating_sub(at?)).filter(|age| *age <= MAX_RECEIVE_AGE)
    }
}

/// Reads one datagram: its length, its sender, and when the kernel received it (wall
/// clock), if it said.
pub(crate) fn recv_timestamped(
    socket: impl AsFd,
    buf: &mut [u8],
    cmsg: &mut [u8],
) -> std::io::Result<(usize, SocketAddr, Option<Duration>)> {
    let mut iov = [IoSliceMut::new(buf)];
    let msg = recvmsg::<SockaddrStorage>(
        socket.as_fd().as_raw_fd(),
        &mut iov,
        Some(cmsg),
        MsgFlags::MSG_DONTWAIT,
    )
    .map_err(std::io::Error::from)?;
    let from = msg.address.as_ref().and_then(|a| {
        a.as_sockaddr_in()
            .map(|s| SocketAddr::V4(SocketAddrV4::from(*s)))
            .or_else(|| {
                a.as_sockaddr_in6()
                    .map(|s| SocketAddr::V6(SocketAddrV6::from(*s)))
            })
    });
    let Some(from) = from else {
        return Err(std::io::Error::new(
            ErrorKind::InvalidData,
            "a datagram without a sender",
        ));
    };
    let at = msg.cmsgs().ok().and_then(|mut cmsgs| {
        cmsgs.find_map(|c| match c {
            ControlMessageOwned::ScmTimestampns(ts) => Some(Duration::new(
                u64::try_from(ts.tv_sec()).ok()?,
                u32::try_from(ts.tv_nsec()).ok()?,
            )),
            _ => None,
        })
    });
    Ok((msg.bytes, from, at))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ages_are_what_the_kernel_said_and_believable() {
        let clock = ArrivalClock::now();
        let ms = Duration::from_millis;
        assert_eq!(clock.age(Some(clock.wall - ms(30))), Some(ms(30)));
        assert_eq!(clock.arrival(Some(clock.wall - ms(30))), clock.now - ms(30));
        // Received after the clock was read (a read in the same round): no wait at all.
        assert_eq!(clock.age(Some(clock.wall + ms(2))), Some(Duration::ZERO));
        // Not said, or from before a step of the wall clock: unknown, and timed now.
        assert_eq!(clock.age(None), None);
        assert_eq!(clock.age(Some(clock.wall - ms(5_000))), None);
        assert_eq!(clock.arrival(Some(clock.wall - ms(5_000))), clock.now);
    }
}
