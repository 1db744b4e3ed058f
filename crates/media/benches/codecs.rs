//! Cost per 20 ms frame of the per-leg media path: codecs, concealment, resampling, DTMF
//! detection, the jitter buffer, and a whole receive/send cycle of a `MediaStream`. Not a
//! test; run with `cargo bench -p confero-media --bench codecs`.
//!
//! Each case runs a warm-up, then repeats for about 300 ms and prints nanoseconds per frame.
//! Inputs are prepared before the clock starts and cycled, so the figures are the work
//! itself, with warm caches (as in a mixing thread that handles the same legs every tick).

use std::hint::black_box;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use confero_media::codec::{CodecKind, Decoder, Encoder};
use confero_media::dtmf::InbandDetector;
use confero_media::jitter::{JitterBuffer, Pulled};
use confero_media::resample::{Downsampler2x, Upsampler2x};
use confero_media::rtp::{write_rtp, RtpHeader};
use confero_media::stream::{MediaStream, StreamConfig};
use confero_media::tone::Tone;

const RUN_TIME: Duration = Duration::from_millis(300);
const WARM_UP: usize = 200;

/// Runs `f` (one frame's work, given the iteration number) repeatedly; returns ns per call.
fn measure(mut f: impl FnMut(usize)) -> f64 {
    for i in 0..WARM_UP {
        f(i);
    }
    let start = Instant::now();
    let mut n = 0;
    while start.elapsed() < RUN_TIME {
        for _ in 0..100 {
            f(n);
            n += 1;
        }
    }
    start.elapsed().as_nanos() as f64 / n as f64
}

fn report(name: &str, ns: f64) {
    println!("{name:<44} {ns:>9.0} ns/frame");
}

/// Speech-like test audio: a tone with a little noise, a few frames' worth to cycle through.
fn audio(rate: u32, frames: usize) -> Vec<Vec<i16>> {
    let n = (rate / 50) as usize;
    let mut pcm = Vec::new();
    Tone::new(rate, 220.0, 6000).fill(n * frames, &mut pcm);
    let mut x = 0x1234_5678u32;
    for s in &mut pcm {
        x ^= x << 13;
        x ^= x >> 17;
        x ^= x << 5;
        *s = s.saturating_add((x >> 24) as i16 - 128);
    }
    pcm.chunks(n).map(<[i16]>::to_vec).collect()
}

fn codecs() {
    for kind in [
        CodecKind::Pcmu,
        CodecKind::Pcma,
        CodecKind::G722,
        CodecKind::Opus,
    ] {
        let frames = audio(kind.sample_rate(), 16);
        let mut enc = Encoder::new(kind);
        let mut out = Vec::with_capacity(400);
        let ns = measure(|i| {
            out.clear();
            enc.encode(black_box(&frames[i % frames.len()]), &mut out);
            black_box(&out);
        });
        report(&format!("{kind:?} encode"), ns);

        let mut payloads = Vec::new();
        let mut enc = Encoder::new(kind);
        for f in &frames {
            let mut p = Vec::new();
            enc.encode(f, &mut p);
            payloads.push(p);
        }
        let mut dec = Decoder::new(kind);
        let mut pcm = Vec::with_capacity(400);
        let ns = measure(|i| {
            pcm.clear();
            dec.decode(black_box(&payloads[i % payloads.len()]), &mut pcm);
            black_box(&pcm);
        });
        report(&format!("{kind:?} decode"), ns);

        // The first concealed frame of a loss burst does the pitch search.
        let ns = measure(|i| {
            pcm.clear();
            dec.decode(&payloads[i % payloads.len()], &mut pcm);
            pcm.clear();
            dec.conceal(&mut pcm);
            black_box(&pcm);
        });
        report(&format!("{kind:?} decode + first concealed frame"), ns);
    }
}

fn resampling_and_dtmf() {
    let narrow = audio(8000, 16);
    let wide = audio(16000, 16);
    let mut up = Upsampler2x::new();
    let mut out = Vec::with_capacity(400);
    let ns = measure(|i| {
        out.clear();
        up.process(black_box(&narrow[i % narrow.len()]), &mut out);
        black_box(&out);
    });
    report("upsample 8 -> 16 kHz", ns);
    let mut down = Downsampler2x::new();
    let ns = measure(|i| {
        out.clear();
        down.process(black_box(&wide[i % wide.len()]), &mut out);
        black_box(&out);
    });
    report("downsample 16 -> 8 kHz", ns);
    let mut det = InbandDetector::new(8000);
    let ns = measure(|i| {
        black_box(det.process(black_box(&narrow[i % narrow.len()])));
    });
    report("in-band DTMF detector, 8 kHz", ns);
}

fn jitter_buffer() {
    let t0 = Instant::now();
    let mut jb = JitterBuffer::new(8000, 160);
    let payload = [0xffu8; 160];
    let ns = measure(|i| {
        // Every 7th packet arrives 15 ms late, so the buffer does some real work.
        let late = if i % 7 == 0 { 15 } else { 0 };
        let now = t0 + Duration::from_millis(i as u64 * 20);
        let h = RtpHeader {
            payload_type: 0,
            marker: false,
            sequence: i as u16,
            timestamp: (i as u32).wrapping_mul(160),
            ssrc: 1,
        };
        jb.insert(now + Duration::from_millis(late), &h, black_box(&payload));
        let got = matches!(jb.pop(now + Duration::from_millis(16)), Pulled::Frame(_));
        black_box(got);
    });
    report("jitter buffer insert + pop", ns);
}

/// What one G.711 leg costs per tick outside the mixer: receive one RTP packet, pull and
/// decode a frame, packetize one encoded frame (the encode is shared per mix and not
/// counted here), and poll RTCP.
fn stream_cycle() {
    let t0 = Instant::now();
    let from: SocketAddr = "192.0.2.1:4000"
        .parse()
        .unwrap_or(SocketAddr::from(([0; 4], 0)));
    let mut stream = MediaStream::new(
        StreamConfig {
            codec: CodecKind::Pcmu,
            payload_type: 0,
            dtmf_payload_type: Some(101),
            remote: from,
            latch: confero_media::stream::Latch::Never,
            local_ssrc: 42,
        },
        t0,
    );
    let mut packets = Vec::new();
    for (i, f) in audio(8000, 16).iter().enumerate() {
        let mut payload = Vec::new();
        Encoder::new(CodecKind::Pcmu).encode(f, &mut payload);
        packets.push((i, payload));
    }
    let mut datagram = Vec::with_capacity(200);
    let mut out = Vec::with_capacity(200);
    let send = [0xffu8; 160];
    let ns = measure(|i| {
        let now = t0 + Duration::from_millis(i as u64 * 20);
        let h = RtpHeader {
            payload_type: 0,
            marker: false,
            sequence: i as u16,
            timestamp: (i as u32).wrapping_mul(160),
            ssrc: 7,
        };
        datagram.clear();
        write_rtp(&h, &packets[i % packets.len()].1, &mut datagram);
        stream.handle_packet(now, black_box(&datagram), from);
        black_box(stream.pull_frame(now + Duration::from_millis(5)));
        out.clear();
        stream.packetize(&send, &mut out);
        out.clear();
        black_box(stream.poll_rtcp(now, &mut out));
    });
    report("G.711 leg: packet in, frame out, packet out", ns);
    stream.enable_inband(true);
    let ns = measure(|i| {
        let i = i + 1_000_000;
        let now = t0 + Duration::from_millis(i as u64 * 20);
        let h = RtpHeader {
            payload_type: 0,
            marker: false,
            sequence: i as u16,
            timestamp: (i as u32).wrapping_mul(160),
            ssrc: 7,
        };
        datagram.clear();
        write_rtp(&h, &packets[i % packets.len()].1, &mut datagram);
        stream.handle_packet(now, black_box(&datagram), from);
        black_box(stream.pull_frame(now + Duration::from_millis(5)));
        out.clear();
        stream.packetize(&send, &mut out);
    });
    report("  the same with in-band DTMF detection", ns);
}

fn main() {
    println!("confero-media per-frame costs (20 ms frames)");
    codecs();
    resampling_and_dtmf();
    jitter_buffer();
    stream_cycle();
}
