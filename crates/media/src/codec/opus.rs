//! Opus through opus-rs, at 16 kHz mono: SILK wideband, the speech mode. The RTP clock of
//! the payloads stays at 48 kHz (RFC 7587); that is the stream's business, not the codec's.

use opus_rs::{Application, OpusDecoder, OpusEncoder};

/// Coding rate inside Confero.
const RATE: i32 = 16_000;
/// Samples in a 20 ms frame at [`RATE`].
const FRAME: usize = 320;
/// Enough for any 20 ms voice frame (RFC 6716 caps a frame at 1275 bytes).
const MAX_PACKET: usize = 1275;

/// Target bitrate: wideband speech is transparent well below this.
const BITRATE: i32 = 32_000;
/// Encoder effort (0–10): 5 halves the cost of 9 for no audible loss on speech.
const COMPLEXITY: i32 = 5;

/// opus-rs keeps about 230 KiB per encoder and 180 KiB per decoder: the state is made on
/// first use and can be given back (see [`Encoder::release`]), so that a room of listeners
/// does not hold a private encoder and a decoder each for nothing.
pub(super) struct Encoder {
    inner: Option<Box<OpusEncoder>>,
    buf: Vec<u8>,
}

impl std::fmt::Debug for Encoder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("opus::Encoder")
    }
}

impl Encoder {
    pub(super) fn new() -> Self {
        Encoder {
            inner: None,
            buf: Vec::new(),
        }
    }

    fn make() -> Box<OpusEncoder> {
        // 16 kHz mono VoIP is always a valid configuration.
        let mut inner = OpusEncoder::new(RATE, 1, Application::Voip)
            .map(Box::new)
            .unwrap_or_else(|e| panic!("opus-rs refused 16 kHz mono VoIP: {e}"));
        inner.bitrate_bps = BITRATE;
        inner.complexity = COMPLEXITY;
        inner.use_cbr = false;
        // In-band FEC lets a browser rebuild a lost frame from the next one.
        inner.use_inband_fec = true;
        inner.packet_loss_perc = 5;
        inner
    }

    /// Frees the state; the next frame starts from a fresh encoder.
    pub(super) fn release(&mut self) {
        *self = Encoder::new();
    }

    /// Appends one 20 ms frame's packet; a frame of another length is padded or cut.
    pub(super) fn encode(&mut self, pcm: &[i16], out: &mut Vec<u8>) {
        let mut frame = [0i16; FRAME];
        let n = pcm.len().min(FRAME);
        frame[..n].copy_from_slice(&pcm[..n]);
        if self.buf.len() < MAX_PACKET {
            self.buf.resize(MAX_PACKET, 0);
        }
        let inner = self.inner.get_or_insert_with(Encoder::make);
        if let Ok(len) = inner.encode_i16(&frame, FRAME, &mut self.buf) {
            out.extend_from_slice(&self.buf[..len]);
        }
    }
}

pub(super) struct Decoder {
    inner: Option<Box<OpusDecoder>>,
    pcm: Vec<f32>,
}

impl std::fmt::Debug for Decoder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("opus::Decoder")
    }
}

fn to_i16(x: f32) -> i16 {
    (x * 32768.0).round().clamp(-32768.0, 32767.0) as i16
}

impl Decoder {
    /// No state until the first packet (see [`Encoder`]).
    pub(super) fn new() -> Self {
        Decoder {
            inner: None,
            pcm: Vec::new(),
        }
    }

    fn ensure_state(&mut self) {
        if self.pcm.len() < FRAME * 6 {
            self.pcm.resize(FRAME * 6, 0.0);
        }
        if self.inner.is_none() {
            let made = OpusDecoder::new(RATE, 1)
                .unwrap_or_else(|e| panic!("opus-rs refused a 16 kHz mono decoder: {e}"));
            self.inner = Some(Box::new(made));
        }
    }

    /// Appends the PCM of one packet (one frame of silence for a packet it cannot read).
    pub(super) fn decode(&mut self, payload: &[u8], out: &mut Vec<i16>) {
        self.ensure_state();
        let Some(inner) = self.inner.as_mut() else {
            return;
        };
        match inner.decode(payload, FRAME * 6, &mut self.pcm) {
            Ok(n) => out.extend(self.pcm[..n].iter().map(|&x| to_i16(x))),
            Err(_) => out.extend(std::iter::repeat_n(0, FRAME)),
        }
    }

    /// One frame of Opus's own loss concealment (silence before any packet).
    pub(super) fn conceal(&mut self, out: &mut Vec<i16>) {
        let Some(inner) = self.inner.as_mut() else {
            out.extend(std::iter::repeat_n(0, FRAME));
            return;
        };
        match inner.decode(&[], FRAME, &mut self.pcm) {
            Ok(n) => out.extend(self.pcm[..n].iter().map(|&x| to_i16(x))),
            Err(_) => out.extend(std::iter::repeat_n(0, FRAME)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn goertzel(x: &[i16], freq: f64) -> f64 {
        let w = 2.0 * std::f64::consts::PI * freq / f64::from(RATE);
        let c = 2.0 * w.cos();
        let (mut s1, mut s2) = (0.0f64, 0.0f64);
        for &v in x {
            let s0 = f64::from(v) + c * s1 - s2;
            s2 = s1;
            s1 = s0;
        }
        (s1 * s1 + s2 * s2 - c * s1 * s2).max(0.0).sqrt() / x.len() as f64
    }

    #[test]
    fn state_is_made_on_first_use_and_given_back() {
        let mut dec = Decoder::new();
        assert!(dec.inner.is_none());
        let mut out = Vec::new();
        dec.conceal(&mut out);
        assert_eq!(
            out,
            vec![0; FRAME],
            "nothing to conceal before the first packet"
        );
        assert!(dec.inner.is_none(), "concealing silence needs no decoder");
        let mut enc = Encoder::new();
        assert!(enc.inner.is_none());
        let mut packet = Vec::new();
        enc.encode(&[1000; FRAME], &mut packet);
        assert!(enc.inner.is_some() && !packet.is_empty());
        enc.release();
        assert!(enc.inner.is_none());
        let mut again = Vec::new();
        enc.encode(&[1000; FRAME], &mut again);
        assert_eq!(
            again, packet,
            "a released encoder starts over exactly like a new one"
        );
        out.clear();
        dec.decode(&packet, &mut out);
        assert_eq!(out.len(), FRAME);
        assert!(dec.inner.is_some());
    }

    #[test]
    fn a_tone_survives_encode_and_decode() {
        let mut enc = Encoder::new();
        let mut dec = Decoder::new();
        let mut decoded = Vec::new();
        let mut sizes = Vec::new();
        for n in 0..50 {
            let frame: Vec<i16> = (0..FRAME)
                .map(|i| {
                    let t = (n * FRAME + i) as f64 / f64::from(RATE);
                    (8000.0 * (2.0 * std::f64::consts::PI * 440.0 * t).sin()) as i16
                })
                .collect();
            let mut packet = Vec::new();
            enc.encode(&frame, &mut packet);
            sizes.push(packet.len());
            dec.decode(&packet, &mut decoded);
        }
        assert_eq!(decoded.len(), 50 * FRAME);
        let tail = &decoded[10 * FRAME..];
        assert!(goertzel(tail, 440.0) > 10.0 * goertzel(tail, 1000.0));
        let mean = sizes.iter().sum::<usize>() / sizes.len();
        assert!((20..=160).contains(&mean), "about 32 kbit/s: {mean} bytes");
        // A lost packet is concealed with a full frame.
        let before = decoded.len();
        dec.conceal(&mut decoded);
        assert_eq!(decoded.len() - before, FRAME);
    }
}
