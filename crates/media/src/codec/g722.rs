//! ITU-T G.722 (09/2012) at 64 kbit/s: sub-band ADPCM over a quadrature mirror filter pair.
//!
//! Each pair of 16 kHz input samples is split by the transmit QMF into one lower-band sample
//! (0–4 kHz) and one upper-band sample (4–8 kHz, spectrally folded). The lower band is coded
//! with 6 bits and the upper band with 2 bits of adaptive differential PCM, giving one octet
//! per pair: `ihigh << 6 | ilow`. The decoder mirrors the ADPCM loops and recombines the bands
//! with the receive QMF.
//!
//! The arithmetic is the recommendation's fixed-point arithmetic (block names such as
//! `LOGSCL` or `UPPOL2` appear in comments), so that our bit stream matches every other
//! conforming implementation: the ADPCM loops in encoder and decoder must stay in lock step,
//! and a peer's decoder only does that if we round exactly as it does. Only mode 1 (64 kbit/s,
//! all 6 lower-band bits) is decoded; RTP G.722 (RFC 3551) is always 64 kbit/s.

/// Transmit and receive QMF coefficients h0..h23, scaled by 2^13 (G.722 Table 11).
const QMF: [i32; 24] = [
    3, -11, -11, 53, 12, -156, 32, 362, -210, -805, 951, 3876, 3876, 951, -805, -210, 362, 32,
    -156, 12, 53, -11, -11, 3,
];

/// Lower-band 6-bit quantizer decision levels (Table 12), in units of det/4096.
const Q6: [i32; 31] = [
    0, 35, 72, 110, 150, 190, 233, 276, 323, 370, 422, 473, 530, 587, 650, 714, 786, 858, 940,
    1023, 1121, 1219, 1339, 1458, 1612, 1765, 1980, 2195, 2557, 2919, 0,
];
/// 6-bit codes for negative and positive differences, by quantizer interval (Table 12).
const ILN: [u8; 31] = [
    0, 63, 62, 31, 30, 29, 28, 27, 26, 25, 24, 23, 22, 21, 20, 19, 18, 17, 16, 15, 14, 13, 12, 11,
    10, 9, 8, 7, 6, 5, 4,
];
const ILP: [u8; 31] = [
    0, 61, 60, 59, 58, 57, 56, 55, 54, 53, 52, 51, 50, 49, 48, 47, 46, 45, 44, 43, 42, 41, 40, 39,
    38, 37, 36, 35, 34, 33, 32,
];

/// Lower-band inverse quantizer for the 4-bit code that feeds the predictor (Table 14).
const QM4: [i32; 16] = [
    0, -20456, -12896, -8968, -6288, -4240, -2584, -1200, 20456, 12896, 8968, 6288, 4240, 2584,
    1200, 0,
];
/// Lower-band inverse quantizer for the full 6-bit code, used for output only (Table 15).
const QM6: [i32; 64] = [
    -136, -136, -136, -136, -24808, -21904, -19008, -16704, -14984, -13512, -12280, -11192, -10232,
    -9360, -8576, -7856, -7192, -6576, -6000, -5456, -4944, -4464, -4008, -3576, -3168, -2776,
    -2400, -2032, -1688, -1360, -1040, -728, 24808, 21904, 19008, 16704, 14984, 13512, 12280,
    11192, 10232, 9360, 8576, 7856, 7192, 6576, 6000, 5456, 4944, 4464, 4008, 3576, 3168, 2776,
    2400, 2032, 1688, 1360, 1040, 728, 432, 136, -432, -136,
];
/// Lower-band log scale factor multipliers, indexed through `RL42` (Table 16).
const WL: [i32; 8] = [-60, -30, 58, 172, 334, 538, 1198, 3042];
const RL42: [usize; 16] = [0, 7, 6, 5, 4, 3, 2, 1, 7, 6, 5, 4, 3, 2, 1, 0];
/// 2048 · 2^(i/32): the inverse-log table of SCALEL/SCALEH (Table 17).
const ILB: [i32; 32] = [
    2048, 2093, 2139, 2186, 2233, 2282, 2332, 2383, 2435, 2489, 2543, 2599, 2656, 2714, 2774, 2834,
    2896, 2960, 3025, 3091, 3158, 3228, 3298, 3371, 3444, 3520, 3597, 3676, 3756, 3838, 3922, 4008,
];

/// Upper-band 2-bit inverse quantizer and codes (Tables 18–19).
const QM2: [i32; 4] = [-7408, -1616, 7408, 1616];
const IHN: [u8; 3] = [0, 1, 0];
const IHP: [u8; 3] = [0, 3, 2];
const WH: [i32; 3] = [0, -214, 798];
const RH2: [usize; 4] = [2, 1, 2, 1];

#[inline]
fn sat16(x: i32) -> i32 {
    x.clamp(-32768, 32767)
}

/// The adaptive predictor and scale factor of one sub-band (shared by encoder and decoder).
#[derive(Clone, Debug)]
struct Band {
    /// Signal estimate for the next sample (sp + sz).
    s: i32,
    /// Output of the zero section (six-tap FIR over past differences).
    sz: i32,
    /// Reconstructed signal, now and two samples back.
    r: [i32; 3],
    /// Partially reconstructed signal (difference + zero section), now and two back.
    p: [i32; 3],
    /// Pole coefficients a1, a2 (index 0 unused).
    a: [i32; 3],
    /// Zero coefficients b1..b6 (index 0 unused).
    b: [i32; 7],
    /// Quantized differences, now and six back.
    d: [i32; 7],
    /// Logarithmic scale factor.
    nb: i32,
    /// Linear scale factor (quantizer step).
    det: i32,
}

impl Band {
    fn new(det: i32) -> Band {
        Band {
            s: 0,
            sz: 0,
            r: [0; 3],
            p: [0; 3],
            a: [0; 3],
            b: [0; 7],
            d: [0; 7],
            nb: 0,
            det,
        }
    }

    /// LOGSCL/LOGSCH then SCALEL/SCALEH: adapt the step size from the multiplier `w`.
    /// `max_nb` and `shift` differ between the bands (18432/8 lower, 22528/10 upper).
    fn adapt_scale(&mut self, w: i32, max_nb: i32, shift: i32) {
        self.nb = (((self.nb * 127) >> 7) + w).clamp(0, max_nb);
        let mantissa = ILB[((self.nb >> 6) & 31) as usize];
        let exp = shift - (self.nb >> 11);
        let lin = if exp < 0 {
            mantissa << -exp
        } else {
            mantissa >> exp
        };
        self.det = lin << 2;
    }

    /// Block 4: reconstruct, adapt the pole and zero predictors from the quantized difference
    /// `dq`, and compute the estimate for the next sample.
    fn predict(&mut self, dq: i32) {
        // RECONS, PARREC
        self.d[0] = dq;
        self.r[0] = sat16(self.s + dq);
        self.p[0] = sat16(self.sz + dq);

        // UPPOL2: second pole coefficient, driven by the signs of p over three samples.
        let neg = |x: i32| x < 0;
        let a1x4 = sat16(self.a[1] << 2);
        let mut wd2 = if neg(self.p[0]) == neg(self.p[1]) {
            -a1x4
        } else {
            a1x4
        };
        wd2 = wd2.min(32767);
        let mut a2 = (wd2 >> 7)
            + if neg(self.p[0]) == neg(self.p[2]) {
                128
            } else {
                -128
            };
        a2 += (self.a[2] * 32512) >> 15;
        let a2 = a2.clamp(-12288, 12288);

        // UPPOL1: first pole coefficient, bounded so the pole pair stays stable.
        let step = if neg(self.p[0]) == neg(self.p[1]) {
            192
        } else {
            -192
        };
        let a1 = sat16(step + ((self.a[1] * 32640) >> 15));
        let bound = sat16(15360 - a2);
        let a1 = a1.clamp(-bound, bound);

        // UPZERO: sign-sign update of the six zero coefficients.
        let gain = if dq == 0 { 0 } else { 128 };
        for i in 1..7 {
            let same = neg(self.d[i]) == neg(dq);
            let leak = (self.b[i] * 32640) >> 15;
            self.b[i] = sat16(if same { gain } else { -gain } + leak);
        }

        // DELAYA
        self.d.copy_within(0..6, 1);
        self.r[2] = self.r[1];
        self.r[1] = self.r[0];
        self.p[2] = self.p[1];
        self.p[1] = self.p[0];
        self.a[1] = a1;
        self.a[2] = a2;

        // FILTEP: pole section over the reconstructed signal.
        let sp = sat16(
            ((self.a[1] * sat16(self.r[1] << 1)) >> 15)
                + ((self.a[2] * sat16(self.r[2] << 1)) >> 15),
        );
        // FILTEZ: zero section over the quantized differences.
        let mut sz = 0;
        for i in (1..7).rev() {
            sz += (self.b[i] * sat16(self.d[i] << 1)) >> 15;
        }
        self.sz = sat16(sz);
        // PREDIC
        self.s = sat16(sp + self.sz);
    }
}

/// Reset state of both bands: step sizes 32 (lower) and 8 (upper), as the recommendation
/// requires so that independently reset encoders and decoders agree.
fn bands() -> (Band, Band) {
    (Band::new(32), Band::new(8))
}

/// Applies the lower-band ADPCM feedback for 4-bit code `ilr` (INVQAL, LOGSCL, SCALEL, block 4).
fn lower_feedback(band: &mut Band, ilr: usize) {
    let dq = (band.det * QM4[ilr]) >> 15;
    band.adapt_scale(WL[RL42[ilr]], 18432, 8);
    band.predict(dq);
}

/// Applies the upper-band ADPCM feedback for 2-bit code `ih`; returns the quantized difference.
fn upper_feedback(band: &mut Band, ih: usize) -> i32 {
    let dq = (band.det * QM2[ih]) >> 15;
    band.adapt_scale(WH[RH2[ih]], 22528, 10);
    band.predict(dq);
    dq
}

/// Sums a 24-sample QMF delay line (oldest first) as the recommendation's two polyphase
/// halves: `even` weights the newest sample and every second one before it with h0, h2, …,
/// `odd` weights the others with h1, h3, … .
#[inline]
fn polyphase(line: &[i32; 24]) -> (i32, i32) {
    let mut even = 0;
    let mut odd = 0;
    for k in 0..12 {
        even += QMF[2 * k] * line[23 - 2 * k];
        odd += QMF[2 * k + 1] * line[22 - 2 * k];
    }
    (even, odd)
}

/// G.722 encoder state: the transmit QMF delay line and both sub-band ADPCM loops.
#[derive(Clone, Debug)]
pub(super) struct Encoder {
    line: [i32; 24],
    low: Band,
    high: Band,
}

impl Encoder {
    pub(super) fn new() -> Encoder {
        let (low, high) = bands();
        Encoder {
            line: [0; 24],
            low,
            high,
        }
    }

    pub(super) fn encode(&mut self, pcm: &[i16], out: &mut Vec<u8>) {
        out.reserve(pcm.len() / 2);
        for pair in pcm.chunks_exact(2) {
            out.push(self.encode_pair(pair[0], pair[1]));
        }
    }

    fn encode_pair(&mut self, first: i16, second: i16) -> u8 {
        // Transmit QMF: split into the 0–4 kHz and (folded) 4–8 kHz bands.
        self.line.copy_within(2.., 0);
        self.line[22] = i32::from(first);
        self.line[23] = i32::from(second);
        let (even, odd) = polyphase(&self.line);
        let xl = (even + odd) >> 14;
        let xh = (even - odd) >> 14;

        // Lower band: SUBTRA, QUANTL (6 bits), then the 4-bit feedback loop.
        let el = sat16(xl - self.low.s);
        let mag = if el < 0 { -el - 1 } else { el };
        // Rec. G.722 takes the magnitude of a negative difference as -(el+1) (one's
        // complement), so that -32768 stays representable.
        let mut i = 1;
        while i < 30 && mag >= (Q6[i] * self.low.det) >> 12 {
            i += 1;
        }
        let ilow = if el < 0 { ILN[i] } else { ILP[i] };
        lower_feedback(&mut self.low, usize::from(ilow >> 2));

        // Upper band: SUBTRA, QUANTH (2 bits), feedback.
        let eh = sat16(xh - self.high.s);
        let mag = if eh < 0 { -eh - 1 } else { eh };
        let big = usize::from(mag >= (564 * self.high.det) >> 12) + 1;
        let ihigh = if eh < 0 { IHN[big] } else { IHP[big] };
        upper_feedback(&mut self.high, usize::from(ihigh));

        (ihigh << 6) | ilow
    }
}

/// G.722 decoder state: both sub-band ADPCM loops and the receive QMF delay line.
#[derive(Clone, Debug)]
pub(super) struct Decoder {
    line: [i32; 24],
    low: Band,
    high: Band,
}

impl Decoder {
    pub(super) fn new() -> Decoder {
        let (low, high) = bands();
        Decoder {
            line: [0; 24],
            low,
            high,
        }
    }

    pub(super) fn decode(&mut self, payload: &[u8], out: &mut Vec<i16>) {
        out.reserve(payload.len() * 2);
        for &code in payload {
            let (a, b) = self.decode_octet(code);
            out.push(a);
            out.push(b);
        }
    }

    fn decode_octet(&mut self, code: u8) -> (i16, i16) {
        let ilow = usize::from(code & 0x3f);
        let ihigh = usize::from(code >> 6);

        // Lower band: INVQBL with all 6 bits for the output, the 4-bit code for the loop.
        let rl = (self.low.s + ((self.low.det * QM6[ilow]) >> 15)).clamp(-16384, 16383);
        lower_feedback(&mut self.low, ilow >> 2);

        // Upper band.
        let s = self.high.s;
        let dq = upper_feedback(&mut self.high, ihigh);
        let rh = (s + dq).clamp(-16384, 16383);

        // Receive QMF: interleave sum and difference, filter, and scale back to 16 bits.
        self.line.copy_within(2.., 0);
        self.line[22] = rl + rh;
        self.line[23] = rl - rh;
        let (even, odd) = polyphase(&self.line);
        (sat16(even >> 11) as i16, sat16(odd >> 11) as i16)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn inverse_log_table_matches_formula() {
        for (i, &v) in ILB.iter().enumerate() {
            let want = (2048.0 * 2f64.powf(i as f64 / 32.0)).round() as i32;
            assert_eq!(v, want, "ILB[{i}]");
        }
    }

    #[test]
    fn qmf_is_symmetric_with_unit_dc_gain() {
        for k in 0..24 {
            assert_eq!(QMF[k], QMF[23 - k]);
        }
        assert!((QMF.iter().sum::<i32>() - 8192).abs() < 8);
    }

    #[test]
    fn quantizer_tables_are_consistent() {
        // Each 6-bit reconstruction level lies inside its decision interval (levels are in
        // det/4096 units, reconstructions in det/32768 units).
        for i in 1..30 {
            let lo = Q6[i - 1] * 8;
            let hi = Q6[i] * 8;
            let pos = QM6[usize::from(ILP[i])];
            let neg = QM6[usize::from(ILN[i])];
            assert!(
                pos >= lo && pos < hi,
                "positive level {i}: {lo} <= {pos} < {hi}"
            );
            assert_eq!(neg, -pos, "negative level {i}");
        }
    }

    #[test]
    fn encoder_and_decoder_loops_stay_in_lock_step() {
        let mut enc = Encoder::new();
        let mut dec = Decoder::new();
        let mut rng = 7u32;
        for _ in 0..5000 {
            rng = rng.wrapping_mul(1_103_515_245).wrapping_add(12345);
            let a = (rng >> 16) as i16;
            let code = enc.encode_pair(a, a / 2);
            dec.decode_octet(code);
            assert_eq!(enc.low.s, dec.low.s);
            assert_eq!(enc.low.det, dec.low.det);
            assert_eq!(enc.high.s, dec.high.s);
            assert_eq!(enc.high.det, dec.high.det);
        }
    }
}
