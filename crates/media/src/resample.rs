//! 8 kHz ⇄ 16 kHz conversion, so a room can mix G.711 and G.722 participants at 16 kHz.
//!
//! Both directions use one 47-tap half-band FIR (Kaiser window, β = 7): flat within 0.12 dB
//! up to 3.4 kHz, −6 dB at 4 kHz, below −75 dB from 5 kHz. A half-band filter has every other
//! coefficient zero except the centre, so each output costs 12 multiply-adds, and the
//! upsampler's odd outputs are the input itself, delayed. Each converter keeps the tail of the
//! previous call, so a stream split into 20 ms frames converts exactly as one long signal.
//! The delay is 23 samples at 16 kHz (1.44 ms) each way.

/// Non-zero off-centre coefficients h(±1), h(±3), … h(±23), scaled by 2^16 (the centre
/// coefficient is 0.5 = 32768).
const TAPS: [i64; 12] = [
    20733, -6579, 3574, -2193, 1385, -865, 521, -296, 154, -70, 26, -5,
];
/// Input samples of history the downsampler needs (the filter span minus one).
const DOWN_HISTORY: usize = 46;
/// Input samples of history the upsampler needs.
const UP_HISTORY: usize = 23;

#[inline]
fn to_i16(acc: i64, shift: u32) -> i16 {
    ((acc + (1 << (shift - 1))) >> shift).clamp(-32768, 32767) as i16
}

/// Doubles the sample rate of one stream (8 → 16 kHz).
#[derive(Clone, Debug)]
pub struct Upsampler2x {
    /// The last `UP_HISTORY` inputs followed by the current call's input.
    work: Vec<i16>,
}

impl Default for Upsampler2x {
    fn default() -> Self {
        Self::new()
    }
}

impl Upsampler2x {
    /// A converter whose history is silence.
    #[must_use]
    pub fn new() -> Self {
        Upsampler2x {
            work: vec![0; UP_HISTORY],
        }
    }

    /// Appends two output samples per input sample to `out`.
    pub fn process(&mut self, input: &[i16], out: &mut Vec<i16>) {
        self.work.extend_from_slice(input);
        out.reserve(2 * input.len());
        let w = &self.work;
        for m in UP_HISTORY..w.len() {
            // Even output: the interpolating taps around the gap between x[m-12] and x[m-11].
            let mut acc = 0i64;
            for (i, &q) in TAPS.iter().enumerate() {
                acc += q * (i64::from(w[m - 12 - i]) + i64::from(w[m - 11 + i]));
            }
            out.push(to_i16(acc, 15));
            // Odd output: the centre tap (0.5, doubled for the zero-stuffing) on x[m-11].
            out.push(w[m - 11]);
        }
        let keep = self.work.len() - UP_HISTORY;
        self.work.copy_within(keep.., 0);
        self.work.truncate(UP_HISTORY);
    }
}

/// Halves the sample rate of one stream (16 → 8 kHz), removing what would alias.
#[derive(Clone, Debug)]
pub struct Downsampler2x {
    /// The last `DOWN_HISTORY` inputs followed by the current call's input.
    work: Vec<i16>,
    /// Whether the next input sample has an odd index (an odd-length call leaves it so).
    odd: bool,
}

impl Default for Downsampler2x {
    fn default() -> Self {
        Self::new()
    }
}

impl Downsampler2x {
    /// A converter whose history is silence.
    #[must_use]
    pub fn new() -> Self {
        Downsampler2x {
            work: vec![0; DOWN_HISTORY],
            odd: false,
        }
    }

    /// Appends one output sample per two input samples to `out` (an odd trailing sample is
    /// kept for the next call).
    pub fn process(&mut self, input: &[i16], out: &mut Vec<i16>) {
        self.work.extend_from_slice(input);
        out.reserve(input.len() / 2 + 1);
        let w = &self.work;
        // Outputs fall on even input indices: the first new sample is even unless `odd`.
        let first = DOWN_HISTORY + usize::from(self.odd);
        for p in (first..w.len()).step_by(2) {
            let c = p - 23;
            let mut acc = 32768 * i64::from(w[c]);
            for (i, &q) in TAPS.iter().enumerate() {
                let k = 2 * i + 1;
                acc += q * (i64::from(w[c - k]) + i64::from(w[c + k]));
            }
            out.push(to_i16(acc, 16));
        }
        if input.len() % 2 == 1 {
            self.odd = !self.odd;
        }
        let keep = self.work.len() - DOWN_HISTORY;
        self.work.copy_within(keep.., 0);
        self.work.truncate(DOWN_HISTORY);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sine(rate: f64, freq: f64, amp: f64, n: usize) -> Vec<i16> {
        (0..n)
            .map(|i| (amp * (2.0 * std::f64::consts::PI * freq * i as f64 / rate).sin()) as i16)
            .collect()
    }

    /// Amplitude of `freq` in `x` (single-bin DFT).
    fn level(x: &[i16], rate: f64, freq: f64) -> f64 {
        let (mut re, mut im) = (0.0, 0.0);
        for (n, &s) in x.iter().enumerate() {
            let ph = 2.0 * std::f64::consts::PI * freq * n as f64 / rate;
            re += f64::from(s) * ph.cos();
            im += f64::from(s) * ph.sin();
        }
        2.0 * (re * re + im * im).sqrt() / x.len() as f64
    }

    #[test]
    fn upsampling_keeps_the_tone_and_suppresses_its_image() {
        let input = sine(8000.0, 3000.0, 10000.0, 1600);
        let mut up = Upsampler2x::new();
        let mut out = Vec::new();
        for frame in input.chunks(160) {
            up.process(frame, &mut out);
        }
        assert_eq!(out.len(), 3200);
        let tail = &out[400..];
        let tone = level(tail, 16000.0, 3000.0);
        let image = level(tail, 16000.0, 5000.0);
        assert!((tone - 10000.0).abs() < 200.0, "tone {tone}");
        assert!(image < 10000.0 * 0.001, "image {image}");
    }

    #[test]
    fn downsampling_keeps_the_band_and_rejects_aliases() {
        let mut input = sine(16000.0, 1000.0, 8000.0, 3200);
        for (s, a) in input.iter_mut().zip(sine(16000.0, 6000.0, 8000.0, 3200)) {
            *s += a;
        }
        let mut down = Downsampler2x::new();
        let mut out = Vec::new();
        for frame in input.chunks(320) {
            down.process(frame, &mut out);
        }
        assert_eq!(out.len(), 1600);
        let tail = &out[200..];
        let tone = level(tail, 8000.0, 1000.0);
        // 6 kHz would fold onto 2 kHz.
        let alias = level(tail, 8000.0, 2000.0);
        assert!((tone - 8000.0).abs() < 150.0, "tone {tone}");
        assert!(alias < 8.0, "alias {alias}");
    }

    #[test]
    fn round_trip_is_a_pure_delay_in_band() {
        let input = sine(8000.0, 700.0, 12000.0, 2000);
        let (mut up, mut down) = (Upsampler2x::new(), Downsampler2x::new());
        let (mut wide, mut back) = (Vec::new(), Vec::new());
        for frame in input.chunks(160) {
            wide.clear();
            up.process(frame, &mut wide);
            down.process(&wide, &mut back);
        }
        // 23 samples of delay at 16 kHz each way: 23 at 8 kHz in total.
        let delay = 23;
        let err = input[..input.len() - delay]
            .iter()
            .zip(&back[delay..])
            .skip(100)
            .map(|(&a, &b)| (i32::from(a) - i32::from(b)).abs())
            .max()
            .unwrap();
        assert!(err <= 40, "max error {err}");
    }

    #[test]
    fn odd_chunks_match_one_long_call() {
        let input = sine(16000.0, 440.0, 20000.0, 999);
        let mut whole = Vec::new();
        Downsampler2x::new().process(&input, &mut whole);
        let mut pieces = Vec::new();
        let mut d = Downsampler2x::new();
        for chunk in input.chunks(7) {
            d.process(chunk, &mut pieces);
        }
        assert_eq!(whole, pieces);
        let (mut a, mut b) = (Vec::new(), Vec::new());
        Upsampler2x::new().process(&input, &mut a);
        let mut u = Upsampler2x::new();
        for chunk in input.chunks(13) {
            u.process(chunk, &mut b);
        }
        assert_eq!(a, b);
    }

    #[test]
    fn full_scale_does_not_wrap() {
        let square: Vec<i16> = (0..640)
            .map(|i| if i % 16 < 8 { i16::MAX } else { i16::MIN })
            .collect();
        let mut out = Vec::new();
        Upsampler2x::new().process(&square, &mut out);
        Downsampler2x::new().process(&square, &mut out);
        Upsampler2x::new().process(&[], &mut out);
        Downsampler2x::new().process(&[1], &mut out);
    }
}
