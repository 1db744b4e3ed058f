//! Packet-loss concealment by pitch-period repetition, after the idea of G.711 Appendix I.
//!
//! Voiced speech is nearly periodic, so the least audible stand-in for a lost frame is the
//! last pitch period played again. The period is found once per loss burst by normalised
//! autocorrelation of the last good audio; its end is blended into the samples before it so
//! that the loop has no seam. The output keeps full level for 10 ms, then fades linearly to
//! silence at 60 ms: a longer buzz is worse than a gap. When audio resumes, its first 4 ms are
//! cross-faded from the continuing concealment.
//!
//! All buffers are fixed arrays sized for 16 kHz, so concealment never allocates beyond the
//! caller's output `Vec`.

/// History kept, in samples at 16 kHz (30 ms): enough for the pitch search window plus the
/// longest period.
const HISTORY: usize = 480;
/// Longest pitch period searched, at 16 kHz (15 ms, 66 Hz).
const MAX_PERIOD: usize = 240;

#[derive(Clone, Debug)]
pub(super) struct Concealer {
    /// Samples per millisecond (8 or 16).
    per_ms: usize,
    /// The last `HISTORY` output samples, newest last (only the last `30 * per_ms` are used).
    history: [i16; HISTORY],
    /// The looped period, its length, and the read position in it.
    period: [i16; MAX_PERIOD],
    period_len: usize,
    phase: usize,
    /// Samples concealed in the current loss burst (0 when the last frame was real).
    concealed: usize,
}

impl Concealer {
    pub(super) fn new(sample_rate: u32) -> Concealer {
        Concealer {
            per_ms: (sample_rate / 1000).clamp(1, 16) as usize,
            history: [0; HISTORY],
            period: [0; MAX_PERIOD],
            period_len: 0,
            phase: 0,
            concealed: 0,
        }
    }

    fn history_len(&self) -> usize {
        30 * self.per_ms
    }

    /// Appends `frame` (real or concealed output) to the history.
    fn remember(&mut self, frame: &[i16]) {
        let len = self.history_len();
        let hist = &mut self.history[HISTORY - len..];
        if frame.len() >= len {
            hist.copy_from_slice(&frame[frame.len() - len..]);
        } else {
            hist.copy_within(frame.len().., 0);
            hist[len - frame.len()..].copy_from_slice(frame);
        }
    }

    /// Gain of the `n`-th concealed sample of a burst, in 1/256: 1 for 10 ms, then a linear
    /// fade reaching 0 at 60 ms.
    fn gain(&self, n: usize) -> i32 {
        let hold = 10 * self.per_ms;
        let fade = 50 * self.per_ms;
        if n < hold {
            256
        } else {
            (256 - ((n - hold) * 256 / fade) as i32).max(0)
        }
    }

    /// The next concealment sample, advancing through the looped period.
    fn next_sample(&mut self) -> i16 {
        let gain = self.gain(self.concealed);
        self.concealed += 1;
        if gain == 0 || self.period_len == 0 {
            return 0;
        }
        let s = self.period[self.phase];
        self.phase = (self.phase + 1) % self.period_len;
        ((i32::from(s) * gain) >> 8) as i16
    }

    /// Called with every decoded frame: smooths the resumption after a loss and records the
    /// frame as history.
    pub(super) fn after_decode(&mut self, frame: &mut [i16]) {
        if self.concealed > 0 {
            let fade = (4 * self.per_ms).min(frame.len());
            for (k, s) in frame.iter_mut().take(fade).enumerate() {
                let w = ((k + 1) * 256 / (fade + 1)) as i32;
                let c = i32::from(self.next_sample());
                *s = ((i32::from(*s) * w + c * (256 - w)) >> 8) as i16;
            }
            self.concealed = 0;
        }
        self.remember(frame);
    }

    /// Appends `samples` concealment samples to `out`.
    pub(super) fn conceal(&mut self, samples: usize, out: &mut Vec<i16>) {
        if self.concealed == 0 {
            self.start_burst();
        }
        let start = out.len();
        out.reserve(samples);
        for _ in 0..samples {
            let s = self.next_sample();
            out.push(s);
        }
        // Concealed audio is history too, so a resumed talker is cross-faded from it.
        self.remember(&out[start..]);
    }

    /// Finds the pitch period of the history and prepares the loop.
    fn start_burst(&mut self) {
        let len = self.history_len();
        let hist = &self.history[HISTORY - len..];
        let min_p = (5 * self.per_ms / 2).max(1); // 2.5 ms, 400 Hz
        let max_p = (15 * self.per_ms).min(MAX_PERIOD); // 15 ms
        let window = len - max_p;
        // Normalised correlation of the last `window` samples with the ones `p` earlier,
        // over every `step`-th sample.
        let score = |p: usize, step: usize| {
            let target = hist[len - window..].iter().step_by(step);
            let cand = hist[len - window - p..len - p].iter().step_by(step);
            let (mut corr, mut energy) = (0i64, 0i64);
            for (&a, &b) in target.zip(cand) {
                corr += i64::from(a) * i64::from(b);
                energy += i64::from(b) * i64::from(b);
            }
            if energy > 0 {
                corr as f64 / (energy as f64).sqrt()
            } else {
                0.0
            }
        };
        // Coarse search on every other lag and sample, then refine around the winner: a
        // quarter of the work of a full search, and the same period for voiced speech.
        let pick = |best: (usize, f64), p: usize, step: usize| {
            let sc = score(p, step);
            if sc > best.1 {
                (p, sc)
            } else {
                best
            }
        };
        let coarse = (min_p..=max_p)
            .step_by(2)
            .fold((max_p, f64::MIN), |b, p| pick(b, p, 2));
        let best = (coarse.0.saturating_sub(1).max(min_p)..=(coarse.0 + 1).min(max_p))
            .fold((coarse.0, f64::MIN), |b, p| pick(b, p, 1));
        let p = best.0;
        self.period_len = p;
        self.phase = 0;
        // The loop plays hist[len-p..], then wraps to its start. Blend its last quarter into
        // the samples that really preceded its start, so the wrap is continuous.
        self.period[..p].copy_from_slice(&hist[len - p..]);
        let blend = (p / 4).max(1);
        for k in 0..blend {
            let w = ((k + 1) * 256 / (blend + 1)) as i32;
            let own = i32::from(self.period[p - blend + k]);
            let before = i32::from(hist[len - p - blend + k]);
            self.period[p - blend + k] = ((own * (256 - w) + before * w) >> 8) as i16;
        }
    }
}
