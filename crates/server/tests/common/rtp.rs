//! Plain RTP as a test phone (or an attacker) sends it: G.711 µ-law tones, paced by the
//! caller, and the decoding of what comes back.

use std::f64::consts::PI;

/// G.711 µ-law of one linear sample.
pub fn linear_to_ulaw(sample: i16) -> u8 {
    const BIAS: i32 = 0x84;
    let mut s = i32::from(sample);
    let sign = if s < 0 {
        s = -s;
        0x80
    } else {
        0
    };
    s = (s + BIAS).min(0x7FFF);
    let mut exponent = 7;
    let mut mask = 0x4000;
    while exponent > 0 && s & mask == 0 {
        exponent -= 1;
        mask >>= 1;
    }
    let mantissa = (s >> (exponent + 3)) & 0x0F;
    !(sign | (exponent << 4) | mantissa) as u8
}

/// The linear sample of one G.711 µ-law byte.
pub fn ulaw_to_linear(byte: u8) -> i16 {
    let u = !byte;
    let exponent = i32::from((u >> 4) & 0x07);
    let mantissa = i32::from(u & 0x0F);
    let magnitude = (((mantissa << 3) + 0x84) << exponent) - 0x84;
    (if u & 0x80 != 0 { -magnitude } else { magnitude }) as i16
}

/// One PCMU RTP stream of a sine tone: each call of [`next`](ToneSender::next) is the
/// next 20 ms packet.
pub struct ToneSender {
    ssrc: u32,
    seq: u16,
    sample: u64,
    hz: f64,
}

impl ToneSender {
    pub fn new(hz: f64, ssrc: u32) -> ToneSender {
        ToneSender {
            ssrc,
            seq: ssrc as u16,
            sample: 0,
            hz,
        }
    }

    pub fn next_packet(&mut self) -> Vec<u8> {
        let mut rtp = vec![0x80, if self.sample == 0 { 0x80 } else { 0x00 }];
        rtp.extend_from_slice(&self.seq.to_be_bytes());
        rtp.extend_from_slice(&(self.sample as u32).to_be_bytes());
        rtp.extend_from_slice(&self.ssrc.to_be_bytes());
        for n in self.sample..self.sample + 160 {
            let v = 12_000.0 * (2.0 * PI * self.hz * n as f64 / 8000.0).sin();
            rtp.push(linear_to_ulaw(v as i16));
        }
        self.seq = self.seq.wrapping_add(1);
        self.sample += 160;
        rtp
    }
}

/// The PCMU samples of an RTP packet (payload type 0), if it is one.
pub fn pcmu_samples(packet: &[u8]) -> Option<impl Iterator<Item = i16> + '_> {
    if packet.len() < 12 || packet[0] >> 6 != 2 || packet[1] & 0x7f != 0 {
        return None;
    }
    let header = 12 + 4 * usize::from(packet[0] & 0x0f);
    Some(packet.get(header..)?.iter().map(|&b| ulaw_to_linear(b)))
}
