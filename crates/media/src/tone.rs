//! Generated audio (sine and dual tones for beeps, ringback and DTMF) and a WAV reader for
//! recorded prompts.
//!
//! Generators keep their phase between calls, so a tone rendered frame by frame is as clean as
//! one rendered in one piece.

use std::f64::consts::TAU;

/// A sine oscillator.
#[derive(Clone, Debug)]
pub struct Tone {
    /// Phase in turns, kept in [0, 1) so precision never degrades over a long tone.
    phase: f64,
    step: f64,
    amplitude: f64,
}

impl Tone {
    /// A sine of `freq` Hz at `sample_rate`, peaking at `amplitude` (clamped to i16 range).
    #[must_use]
    pub fn new(sample_rate: u32, freq: f64, amplitude: i16) -> Self {
        Tone {
            phase: 0.0,
            step: freq / f64::from(sample_rate.max(1)),
            amplitude: f64::from(amplitude),
        }
    }

    fn next_value(&mut self) -> f64 {
        let v = (self.phase * TAU).sin() * self.amplitude;
        self.phase = (self.phase + self.step).fract();
        v
    }

    /// Appends `n` samples.
    pub fn fill(&mut self, n: usize, out: &mut Vec<i16>) {
        out.extend((0..n).map(|_| self.next_value().round() as i16));
    }
}

/// Two sines summed, as in DTMF and North American call-progress tones.
#[derive(Clone, Debug)]
pub struct DualTone {
    low: Tone,
    high: Tone,
}

impl DualTone {
    /// Tones of `f1` and `f2` Hz, each peaking at `amplitude` (keep it below 16384 to avoid
    /// clipping the sum).
    #[must_use]
    pub fn new(sample_rate: u32, f1: f64, f2: f64, amplitude: i16) -> Self {
        DualTone {
            low: Tone::new(sample_rate, f1, amplitude),
            high: Tone::new(sample_rate, f2, amplitude),
        }
    }

    /// The DTMF pair for `digit` (`0-9`, `*`, `#`, `A-D`), or `None`.
    #[must_use]
    pub fn dtmf(sample_rate: u32, digit: char, amplitude: i16) -> Option<Self> {
        let (row, col) = dtmf_frequencies(digit)?;
        Some(DualTone::new(
            sample_rate,
            f64::from(row),
            f64::from(col),
            amplitude,
        ))
    }

    /// Appends `n` samples.
    pub fn fill(&mut self, n: usize, out: &mut Vec<i16>) {
        out.extend((0..n).map(|_| {
            let v = self.low.next_value() + self.high.next_value();
            v.round().clamp(-32768.0, 32767.0) as i16
        }));
    }
}

/// DTMF row frequencies (Hz), top to bottom of the keypad.
pub const DTMF_ROWS: [u32; 4] = [697, 770, 852, 941];
/// DTMF column frequencies (Hz), left to right.
pub const DTMF_COLS: [u32; 4] = [1209, 1336, 1477, 1633];
/// The keypad, by row and column.
pub const DTMF_KEYS: [[char; 4]; 4] = [
    ['1', '2', '3', 'A'],
    ['4', '5', '6', 'B'],
    ['7', '8', '9', 'C'],
    ['*', '0', '#', 'D'],
];

/// The (row, column) frequencies of a DTMF digit; lowercase `a-d` are accepted.
#[must_use]
pub fn dtmf_frequencies(digit: char) -> Option<(u32, u32)> {
    let digit = digit.to_ascii_uppercase();
    DTMF_KEYS.iter().enumerate().find_map(|(r, row)| {
        let c = row.iter().position(|&k| k == digit)?;
        Some((DTMF_ROWS[r], DTMF_COLS[c]))
    })
}

/// The amplitude of the `freq` component of `pcm` sampled at `rate` (Goertzel; exact when
/// the window holds a whole number of periods). How tests check audio by content: which
/// tone a listener heard, and that it did not hear its own.
pub fn amplitude(pcm: &[i16], freq: f64, rate: u32) -> f64 {
    let w = 2.0 * std::f64::consts::PI * freq / f64::from(rate);
    let coeff = 2.0 * w.cos();
    let (mut s1, mut s2) = (0.0f64, 0.0f64);
    for &x in pcm {
        let s0 = f64::from(x) + coeff * s1 - s2;
        s2 = s1;
        s1 = s0;
    }
    let power = s1 * s1 + s2 * s2 - coeff * s1 * s2;
    2.0 * power.max(0.0).sqrt() / pcm.len().max(1) as f64
}

/// Appends a beep of `ms` milliseconds with 5 ms raised-cosine edges, so it starts and stops
/// without a click (join and leave sounds).
pub fn beep(sample_rate: u32, freq: f64, ms: u32, amplitude: i16, out: &mut Vec<i16>) {
    let n = (u64::from(sample_rate) * u64::from(ms) / 1000) as usize;
    let edge = ((sample_rate / 200) as usize).min(n / 2).max(1);
    let mut tone = Tone::new(sample_rate, freq, amplitude);
    out.reserve(n);
    for i in 0..n {
        let from_edge = i.min(n - 1 - i);
        let gain = if from_edge < edge {
            0.5 - 0.5 * (std::f64::consts::PI * from_edge as f64 / edge as f64).cos()
        } else {
            1.0
        };
        out.push((tone.next_value() * gain).round() as i16);
    }
}

/// Why a WAV file was refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum WavError {
    /// Not a RIFF/WAVE file.
    #[error("not a RIFF/WAVE file")]
    NotWav,
    /// The `fmt ` or `data` chunk is missing or cut short.
    #[error("missing or truncated {0} chunk")]
    MissingChunk(&'static str),
    /// Compressed or floating-point audio.
    #[error("unsupported WAV format tag {0:#06x} (only 16-bit PCM)")]
    UnsupportedFormat(u16),
    /// Not 16 bits per sample.
    #[error("unsupported sample size: {0} bits (only 16-bit PCM)")]
    UnsupportedBits(u16),
    /// Neither mono nor stereo.
    #[error("unsupported channel count {0} (mono or stereo only)")]
    UnsupportedChannels(u16),
    /// A sample rate of zero.
    #[error("invalid sample rate {0}")]
    BadRate(u32),
}

/// Reads a 16-bit PCM WAV file (mono, or stereo mixed down to mono): returns its sample rate
/// and samples. Unknown chunks (LIST, fact, …) are skipped; a data chunk whose declared size
/// runs past the end of the file (streamed recordings) is read up to the end.
pub fn read_wav(bytes: &[u8]) -> Result<(u32, Vec<i16>), WavError> {
    if bytes.len() < 12 || &bytes[0..4] != b"RIFF" || &bytes[8..12] != b"WAVE" {
        return Err(WavError::NotWav);
    }
    let u16_at = |d: &[u8], i: usize| d.get(i..i + 2).map(|b| u16::from_le_bytes([b[0], b[1]]));
    let u32_at = |d: &[u8], i: usize| {
        d.get(i..i + 4)
            .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    };
    let mut format: Option<(u16, u32)> = None;
    let mut at = 12usize;
    while let (Some(id), Some(size)) = (bytes.get(at..at + 4), u32_at(bytes, at + 4)) {
        let body_start = at + 8;
        let size = size as usize;
        let body_end = body_start.saturating_add(size);
        match id {
            b"fmt " => {
                let body = bytes
                    .get(body_start..body_end)
                    .filter(|b| b.len() >= 16)
                    .ok_or(WavError::MissingChunk("fmt"))?;
                let mut tag = u16_at(body, 0).unwrap_or(0);
                let channels = u16_at(body, 2).unwrap_or(0);
                let rate = u32_at(body, 4).unwrap_or(0);
                let bits = u16_at(body, 14).unwrap_or(0);
                if tag == 0xfffe {
                    // WAVE_FORMAT_EXTENSIBLE: the real tag opens the sub-format GUID.
                    tag = u16_at(body, 24).ok_or(WavError::MissingChunk("fmt"))?;
                }
                if tag != 1 {
                    return Err(WavError::UnsupportedFormat(tag));
                }
                if bits != 16 {
                    return Err(WavError::UnsupportedBits(bits));
                }
                if !(1..=2).contains(&channels) {
                    return Err(WavError::UnsupportedChannels(channels));
                }
                if rate == 0 {
                    return Err(WavError::BadRate(rate));
                }
                format = Some((channels, rate));
            }
            b"data" => {
                let (channels, rate) = format.ok_or(WavError::MissingChunk("fmt"))?;
                let end = body_end.min(bytes.len());
                let data = bytes.get(body_start..end).unwrap_or(&[]);
                let frame = 2 * usize::from(channels);
                let samples = data
                    .chunks_exact(frame)
                    .map(|f| {
                        let l = i32::from(i16::from_le_bytes([f[0], f[1]]));
                        if channels == 2 {
                            let r = i32::from(i16::from_le_bytes([f[2], f[3]]));
                            ((l + r) >> 1) as i16
                        } else {
                            l as i16
                        }
                    })
                    .collect();
                return Ok((rate, samples));
            }
            _ => {}
        }
        // Chunks are padded to an even length.
        at = body_end.saturating_add(size & 1);
    }
    Err(WavError::MissingChunk(if format.is_some() {
        "data"
    } else {
        "fmt"
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn wav(tag: u16, channels: u16, rate: u32, bits: u16, data: &[u8]) -> Vec<u8> {
        let mut v = Vec::new();
        v.extend_from_slice(b"RIFF");
        v.extend_from_slice(&(36 + data.len() as u32 + 14).to_le_bytes());
        v.extend_from_slice(b"WAVE");
        // An unknown chunk with odd length first, to exercise padding.
        v.extend_from_slice(b"LIST");
        v.extend_from_slice(&5u32.to_le_bytes());
        v.extend_from_slice(b"abcde\0");
        v.extend_from_slice(b"fmt ");
        v.extend_from_slice(&16u32.to_le_bytes());
        v.extend_from_slice(&tag.to_le_bytes());
        v.extend_from_slice(&channels.to_le_bytes());
        v.extend_from_slice(&rate.to_le_bytes());
        let block = channels * bits / 8;
        v.extend_from_slice(&(rate * u32::from(block)).to_le_bytes());
        v.extend_from_slice(&block.to_le_bytes());
        v.extend_from_slice(&bits.to_le_bytes());
        v.extend_from_slice(b"data");
        v.extend_from_slice(&(data.len() as u32).to_le_bytes());
        v.extend_from_slice(data);
        v
    }

    #[test]
    fn reads_mono_and_stereo() {
        let data: Vec<u8> = [1i16, -2, 300, -32768]
            .iter()
            .flat_map(|s| s.to_le_bytes())
            .collect();
        assert_eq!(
            read_wav(&wav(1, 1, 8000, 16, &data)),
            Ok((8000, vec![1, -2, 300, -32768]))
        );
        // Stereo pairs (1,-2) and (300,-32768) averaged.
        assert_eq!(
            read_wav(&wav(1, 2, 16000, 16, &data)),
            Ok((16000, vec![-1, -16234]))
        );
    }

    #[test]
    fn rejects_other_formats_clearly() {
        assert_eq!(read_wav(b"RIFX"), Err(WavError::NotWav));
        assert_eq!(read_wav(&[0; 64]), Err(WavError::NotWav));
        assert_eq!(
            read_wav(&wav(3, 1, 8000, 32, &[0; 8])),
            Err(WavError::UnsupportedFormat(3))
        );
        assert_eq!(
            read_wav(&wav(1, 1, 8000, 8, &[0; 8])),
            Err(WavError::UnsupportedBits(8))
        );
        assert_eq!(
            read_wav(&wav(1, 6, 8000, 16, &[0; 24])),
            Err(WavError::UnsupportedChannels(6))
        );
        assert_eq!(
            read_wav(&wav(1, 1, 0, 16, &[0; 4])),
            Err(WavError::BadRate(0))
        );
        let mut only_header = wav(1, 1, 8000, 16, &[]);
        only_header.truncate(only_header.len() - 8);
        assert_eq!(read_wav(&only_header), Err(WavError::MissingChunk("data")));
        assert_eq!(
            read_wav(b"RIFF\0\0\0\0WAVE"),
            Err(WavError::MissingChunk("fmt"))
        );
    }

    #[test]
    fn truncated_and_hostile_files_do_not_panic() {
        let data = [7u8; 40];
        let good = wav(1, 1, 8000, 16, &data);
        for n in 0..good.len() {
            let _ = read_wav(&good[..n]);
        }
        // A data size of 4 GiB reads what is there.
        let mut huge = good.clone();
        let at = huge.len() - data.len() - 4;
        huge[at..at + 4].copy_from_slice(&u32::MAX.to_le_bytes());
        assert_eq!(read_wav(&huge).unwrap().1.len(), 20);
        // A chunk size of 4 GiB before the fmt chunk ends the walk cleanly.
        let mut skip = good;
        skip[16..20].copy_from_slice(&u32::MAX.to_le_bytes());
        assert_eq!(read_wav(&skip), Err(WavError::MissingChunk("fmt")));
    }

    #[test]
    fn tones_are_continuous_across_calls() {
        let mut a = Tone::new(8000, 1000.0, 10000);
        let mut whole = Vec::new();
        a.fill(320, &mut whole);
        let mut b = Tone::new(8000, 1000.0, 10000);
        let mut parts = Vec::new();
        b.fill(100, &mut parts);
        b.fill(220, &mut parts);
        assert_eq!(whole, parts);
        assert_eq!(&whole[..3], &[0, 7071, 10000]);
    }

    #[test]
    fn dtmf_table() {
        assert_eq!(dtmf_frequencies('1'), Some((697, 1209)));
        assert_eq!(dtmf_frequencies('0'), Some((941, 1336)));
        assert_eq!(dtmf_frequencies('#'), Some((941, 1477)));
        assert_eq!(dtmf_frequencies('d'), Some((941, 1633)));
        assert_eq!(dtmf_frequencies('x'), None);
        assert!(DualTone::dtmf(8000, 'x', 1000).is_none());
        let mut out = Vec::new();
        DualTone::dtmf(8000, '5', 16000)
            .unwrap()
            .fill(800, &mut out);
        assert!(out.iter().all(|&s| s > -32768));
    }

    #[test]
    fn beep_has_soft_edges() {
        let mut out = Vec::new();
        beep(16000, 440.0, 100, 8000, &mut out);
        assert_eq!(out.len(), 1600);
        assert!(out[0].abs() < 10 && out[1599].abs() < 200);
        assert!(out[800..840].iter().any(|&s| s > 7000));
    }
}
