//! Feeds arbitrary datagrams to a call leg's RTP endpoint, as anyone who finds its port
//! may: the RTP and RTCP readers and the whole receive pipeline (source check, jitter
//! buffer, decoders, RFC 4733 and in-band digits). Nothing may panic, and what a stranger
//! sends never counts as the phone's.
#![no_main]

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use confero_media::codec::CodecKind;
use confero_media::rtp::{parse_rtcp, parse_rtp};
use confero_media::stream::{Latch, MediaStream, StreamConfig};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = parse_rtp(data);
    for packet in parse_rtcp(data) {
        if packet.is_err() {
            break;
        }
    }
    let Some((&selector, rest)) = data.split_first() else {
        return;
    };
    let codec = [
        CodecKind::Pcmu,
        CodecKind::Pcma,
        CodecKind::G722,
        CodecKind::Opus,
    ][usize::from(selector % 4)];
    let phone: SocketAddr = "10.0.0.5:4000".parse().unwrap();
    let nat: SocketAddr = "198.51.100.7:31000".parse().unwrap();
    let stranger: SocketAddr = "203.0.113.66:5000".parse().unwrap();
    let t0 = Instant::now();
    let mut s = MediaStream::new(
        StreamConfig {
            codec,
            payload_type: if codec == CodecKind::Pcmu { 0 } else { 111 },
            dtmf_payload_type: Some(101),
            remote: phone,
            latch: Latch::for_phone(phone, nat.ip()),
            local_ssrc: 7,
        },
        t0,
    );
    s.enable_inband(selector & 4 != 0);
    // The input is a series of datagrams, each prefixed by its length and its source.
    let mut rest = rest;
    let mut i = 0u64;
    while let [len, from, tail @ ..] = rest {
        let n = usize::from(*len).min(tail.len());
        let (packet, after) = tail.split_at(n);
        let source = match from % 3 {
            0 => phone,
            1 => nat,
            _ => stranger,
        };
        let now = t0 + Duration::from_millis(i * 7);
        s.handle_packet(now, packet, source);
        if i % 3 == 0 {
            let _ = s.pull_frame(now);
            while s.poll_dtmf().is_some() {}
            let mut out = Vec::new();
            let _ = s.poll_rtcp(now, &mut out);
        }
        assert_ne!(s.remote(), stranger, "a stranger took the leg");
        rest = after;
        i += 1;
    }
});
