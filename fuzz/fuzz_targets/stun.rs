//! Feeds arbitrary datagrams to a browser leg, as anyone who finds its port may: str0m's
//! entry point demultiplexes STUN (ICE connectivity checks), DTLS and SRTP, and our leg
//! turns its output into media. Nothing may panic.
#![no_main]

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use confero_media::webrtc::WebRtcLeg;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let now = Instant::now();
    let local: SocketAddr = "192.0.2.1:20000".parse().unwrap();
    let Ok((mut leg, _offer)) = WebRtcLeg::offer(now, local) else {
        return;
    };
    let from: SocketAddr = "198.51.100.7:54321".parse().unwrap();
    // Several datagrams, each prefixed by its length.
    let mut rest = data;
    let mut i = 0u64;
    while let [len, tail @ ..] = rest {
        let n = usize::from(*len).min(tail.len());
        let (packet, after) = tail.split_at(n);
        let t = now + Duration::from_millis(i);
        leg.handle_datagram(t, from, packet);
        leg.handle_timeout(t);
        while leg.poll_output().is_some() {}
        rest = after;
        i += 1;
    }
});
