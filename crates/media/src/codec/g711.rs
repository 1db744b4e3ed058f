//! ITU-T G.711 companding, computed at compile time into lookup tables.
//!
//! μ-law works on 14-bit linear samples and A-law on 13-bit ones; 16-bit input is truncated
//! to those widths first, as G.711 encoders conventionally do. Decoding is a 256-entry table;
//! encoding indexes a table by the truncated sample (16 KiB for μ-law, 8 KiB for A-law), so a
//! frame costs one load per sample on the hot path.

/// μ-law bias added before finding the segment (33 in 14-bit units, 0x84 in 16-bit units).
const ULAW_BIAS: i32 = 0x84;
/// Largest 14-bit magnitude μ-law can represent before clipping.
const ULAW_CLIP: i32 = 8159;

/// Encodes one 14-bit magnitude + sign into a μ-law byte (bits inverted per G.711).
const fn ulaw_encode14(x: i32) -> u8 {
    let (mag, mask) = if x < 0 { (-x, 0x7f) } else { (x, 0xff) };
    let mag = if mag > ULAW_CLIP { ULAW_CLIP } else { mag } + (ULAW_BIAS >> 2);
    // Segment = position of the highest set bit above bit 5 (mag >= 33, so bit 5 or higher).
    let seg = 26 - mag.leading_zeros() as i32; // 31 - lz - 5
    let seg = if seg < 0 { 0 } else { seg };
    if seg >= 8 {
        // Only the clip level itself lands here: the largest code.
        return 0x7f ^ mask;
    }
    let mantissa = (mag >> (seg + 1)) & 0x0f;
    (((seg << 4) | mantissa) as u8) ^ mask
}

const fn ulaw_decode(byte: u8) -> i16 {
    let u = !byte;
    let t = ((((u & 0x0f) as i32) << 3) + ULAW_BIAS) << ((u & 0x70) >> 4);
    (if u & 0x80 != 0 {
        ULAW_BIAS - t
    } else {
        t - ULAW_BIAS
    }) as i16
}

/// Encodes a 13-bit sample into an A-law byte (even bits inverted per G.711).
const fn alaw_encode13(x: i32) -> u8 {
    let (mag, mask) = if x >= 0 { (x, 0xd5) } else { (-x - 1, 0x55) };
    let mag = if mag > 0x0fff { 0x0fff } else { mag };
    // Segment 0 and 1 share the step size; above them the segment is the top bit's position.
    let top = 31 - (mag | 1).leading_zeros() as i32; // 0..=11
    let seg = if top < 5 { 0 } else { top - 4 };
    let shift = if seg < 2 { 1 } else { seg };
    let mantissa = (mag >> shift) & 0x0f;
    (((seg << 4) | mantissa) as u8) ^ mask
}

const fn alaw_decode(byte: u8) -> i16 {
    let a = byte ^ 0x55;
    let seg = ((a & 0x70) >> 4) as i32;
    let mut t = ((a & 0x0f) as i32) << 4;
    t = match seg {
        0 => t + 8,
        1 => t + 0x108,
        _ => (t + 0x108) << (seg - 1),
    };
    (if a & 0x80 != 0 { t } else { -t }) as i16
}

static ULAW_DECODE: [i16; 256] = {
    let mut t = [0i16; 256];
    let mut i = 0;
    while i < 256 {
        t[i] = ulaw_decode(i as u8);
        i += 1;
    }
    t
};

static ALAW_DECODE: [i16; 256] = {
    let mut t = [0i16; 256];
    let mut i = 0;
    while i < 256 {
        t[i] = alaw_decode(i as u8);
        i += 1;
    }
    t
};

/// Indexed by the 14-bit sample + 8192.
static ULAW_ENCODE: [u8; 16384] = {
    let mut t = [0u8; 16384];
    let mut i = 0;
    while i < 16384 {
        t[i] = ulaw_encode14(i as i32 - 8192);
        i += 1;
    }
    t
};

/// Indexed by the 13-bit sample + 4096.
static ALAW_ENCODE: [u8; 8192] = {
    let mut t = [0u8; 8192];
    let mut i = 0;
    while i < 8192 {
        t[i] = alaw_encode13(i as i32 - 4096);
        i += 1;
    }
    t
};

/// Decodes a μ-law byte to 16-bit linear PCM.
#[inline]
#[must_use]
pub fn ulaw_to_linear(byte: u8) -> i16 {
    ULAW_DECODE[usize::from(byte)]
}

/// Decodes an A-law byte to 16-bit linear PCM.
#[inline]
#[must_use]
pub fn alaw_to_linear(byte: u8) -> i16 {
    ALAW_DECODE[usize::from(byte)]
}

/// Encodes a 16-bit linear sample to μ-law.
#[inline]
#[must_use]
pub fn linear_to_ulaw(sample: i16) -> u8 {
    // (sample >> 2) + 8192 is in 0..16384 for every i16.
    ULAW_ENCODE[((i32::from(sample) >> 2) + 8192) as usize & 0x3fff]
}

/// Encodes a 16-bit linear sample to A-law.
#[inline]
#[must_use]
pub fn linear_to_alaw(sample: i16) -> u8 {
    ALAW_ENCODE[((i32::from(sample) >> 3) + 4096) as usize & 0x1fff]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_values() {
        assert_eq!(linear_to_ulaw(0), 0xff);
        assert_eq!(ulaw_to_linear(0xff), 0);
        assert_eq!(ulaw_to_linear(0x7f), 0);
        assert_eq!(ulaw_to_linear(0x00), -32124);
        assert_eq!(ulaw_to_linear(0x80), 32124);
        assert_eq!(linear_to_ulaw(i16::MAX), 0x80);
        assert_eq!(linear_to_ulaw(i16::MIN), 0x00);
        assert_eq!(linear_to_alaw(0), 0xd5);
        assert_eq!(alaw_to_linear(0xd5), 8);
        assert_eq!(alaw_to_linear(0x55), -8);
        assert_eq!(alaw_to_linear(0xaa), 32256);
        assert_eq!(alaw_to_linear(0x2a), -32256);
        assert_eq!(linear_to_alaw(i16::MAX), 0xaa);
        assert_eq!(linear_to_alaw(i16::MIN), 0x2a);
        // Segment boundaries: 1 kHz test tone values from common G.711 references.
        assert_eq!(linear_to_ulaw(1000), 0xce);
        assert_eq!(linear_to_ulaw(-1000), 0x4e);
        assert_eq!(linear_to_alaw(1000), 0xfa);
        assert_eq!(linear_to_alaw(-1000), 0x7a);
    }

    #[test]
    fn decode_then_encode_is_identity() {
        for b in 0..=255u8 {
            let u = linear_to_ulaw(ulaw_to_linear(b));
            // 0x7f (negative zero) re-encodes as positive zero.
            assert!(u == b || (b == 0x7f && u == 0xff), "ulaw {b:#x} -> {u:#x}");
            assert_eq!(linear_to_alaw(alaw_to_linear(b)), b, "alaw {b:#x}");
        }
    }

    #[test]
    fn encoding_is_monotonic_and_error_bounded() {
        let mut prev_u = ulaw_to_linear(linear_to_ulaw(i16::MIN));
        let mut prev_a = alaw_to_linear(linear_to_alaw(i16::MIN));
        for s in i16::MIN..=i16::MAX {
            let u = ulaw_to_linear(linear_to_ulaw(s));
            let a = alaw_to_linear(linear_to_alaw(s));
            assert!(u >= prev_u && a >= prev_a, "not monotonic at {s}");
            prev_u = u;
            prev_a = a;
            // Quantisation error stays within half a step (≤ 1/32 of the magnitude + floor),
            // except in the clipped range above ±32124 / ±32256.
            let x = i32::from(s);
            if x.abs() < 32000 {
                assert!(
                    (i32::from(u) - x).abs() <= x.abs() / 16 + 8,
                    "ulaw {s} -> {u}"
                );
                assert!(
                    (i32::from(a) - x).abs() <= x.abs() / 16 + 16,
                    "alaw {s} -> {a}"
                );
            }
        }
    }
}
