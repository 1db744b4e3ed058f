//! The conference mixer: passive, sans-IO, driven by one clock.
//!
//! A [`Mixer`] is one room. It owns no socket, no thread and no clock: the mixing thread
//! calls, every 20 ms,
//!
//! ```text
//! for each participant with a decoded frame this tick: mixer.put_frame(id, &pcm)
//! mixer.tick()
//! for each participant: send mixer.output(id) (the encoded 20 ms payload) in RTP
//! ```
//!
//! [`add`](Mixer::add), [`remove`](Mixer::remove) and [`set_muted`](Mixer::set_muted) may be
//! called at any time; they are queued and applied, in call order, at the start of the next
//! [`tick`](Mixer::tick), never in the middle of a mix (pjmedia's conference bridge rule).
//!
//! # What each participant hears
//! - Voice activity is detected per participant (frame energy against a noise floor that
//!   adapts, fast attack, [`HANGOVER_TICKS`] of hangover). Only *talkers* are mixed: at most
//!   [`MAX_MIXED_TALKERS`] of them, the loudest this tick, never a muted one. Everyone
//!   else's frame is looked at for its energy and not summed.
//! - The *full mix* is the sum of the mixed talkers. A mixed talker hears the full mix minus
//!   their own voice (mix-minus), encoded for them alone with their own encoder. Everyone
//!   else hears the full mix, encoded ONCE per codec and shared: with 3 talkers among 1,000
//!   participants, the tick costs 3 private encodes plus one shared encode per codec in use.
//! - The room mixes at the highest rate present ([`Mixer::sample_rate`]): 16 kHz as soon as a
//!   G.722 participant is in it, else 8 kHz. In a 16 kHz room, 8 kHz talkers are upsampled
//!   (one [`Upsampler2x`] per participant, its state kept) and 8 kHz listeners get a
//!   downsampled stream: the shared full mix is downsampled once per tick for all of them,
//!   a talker's mix-minus once for that talker.
//! - Sums are taken in `i32` and brought back to `i16` by a memoryless soft limiter
//!   ([`soft_limit`]): linear up to −2.5 dBFS, then bending smoothly toward full scale, so a
//!   loud mix is compressed, never wrapped around.
//!
//! When a participant moves between "talker" and "listener" they start receiving the other
//! stream; a stateful decoder (G.722) sees a small discontinuity, as with other bridges.
//! Likewise a participant's upsampler runs only while they are mixed: when they start
//! talking again, its 1.4 ms of history is the quiet tail of their last hangover.
//!
//! # Costs and allocation
//! A tick allocates nothing once every buffer has reached its size (the first tick after a
//! participant joins, or after the room turns wideband, may grow a few buffers). Only
//! topology changes allocate. Per participant the tick costs one energy measurement; per
//! mixed talker one resampling (if needed), one subtraction, one encode.

use crate::codec::{CodecKind, Encoder};
use crate::idmap::IdMap;
use crate::resample::{Downsampler2x, Upsampler2x};

/// The caller's handle for a participant of a room (a call leg id, for instance).
pub type PartId = u64;

/// The most talkers summed in one tick; quieter talkers beyond them are not heard that tick.
pub const MAX_MIXED_TALKERS: usize = 8;

/// Ticks (20 ms each) a participant stays "talking" after their last frame above the
/// voice threshold: 200 ms, enough to bridge the gaps between words.
pub const HANGOVER_TICKS: u8 = 10;

/// Samples in a 20 ms frame at the highest rate a room mixes at (16 kHz).
const MAX_FRAME: usize = 320;
const NARROW_RATE: u32 = 8_000;
const WIDE_RATE: u32 = 16_000;

/// Below this mean-square energy (an RMS of 100, about −50 dBFS) a frame is never voice.
const MIN_VOICE_ENERGY: f32 = 10_000.0;
/// A frame is voice when its energy is this many times the noise floor (about 7.8 dB).
const VOICE_OVER_FLOOR: f32 = 6.0;
/// The noise floor never goes below this (an RMS of 10, about −70 dBFS).
const FLOOR_MIN: f32 = 100.0;
/// The noise floor falls at once to a quieter frame and rises by at most this factor per
/// tick (3 dB per second): steady noise is learnt in seconds, and the pauses of speech
/// pull the floor back down before speech itself is learnt as noise.
const FLOOR_RISE_PER_TICK: f32 = 1.013_911;

/// The soft limiter is linear up to this magnitude (about −2.5 dBFS).
const LIMITER_KNEE: i32 = 24_576;
/// Headroom between the knee and full scale, into which louder sums are squeezed.
const LIMITER_HEAD: i64 = (i16::MAX as i32 - LIMITER_KNEE) as i64;

/// Brings a sum of samples back to `i16` without ever wrapping around: identity up to
/// ±`LIMITER_KNEE`, then `knee + head·e/(e + head)` for an excess `e`, which has slope 1
/// at the knee and tends to full scale without reaching it.
#[inline]
pub fn soft_limit(sum: i32) -> i16 {
    if (-LIMITER_KNEE..=LIMITER_KNEE).contains(&sum) {
        return sum as i16;
    }
    let excess = i64::from(sum.unsigned_abs()) - i64::from(LIMITER_KNEE);
    let squeezed = i64::from(LIMITER_KNEE) + LIMITER_HEAD * excess / (excess + LIMITER_HEAD);
    // `squeezed` < i16::MAX by construction.
    let magnitude = squeezed as i16;
    if sum < 0 {
        -magnitude
    } else {
        magnitude
    }
}

/// Energy-based voice activity detection with an adaptive noise floor and a hangover.
#[derive(Debug, Clone)]
struct VoiceDetector {
    floor: f32,
    hangover: u8,
    talking: bool,
}

impl VoiceDetector {
    fn new() -> Self {
        Self {
            floor: FLOOR_MIN,
            hangover: 0,
            talking: false,
        }
    }

    /// Feeds one frame's mean-square energy; returns whether the participant is talking.
    fn update(&mut self, energy: f32) -> bool {
        let threshold = (self.floor * VOICE_OVER_FLOOR).max(MIN_VOICE_ENERGY);
        if energy > threshold {
            self.hangover = HANGOVER_TICKS;
            self.talking = true;
        } else if self.hangover > 0 {
            self.hangover -= 1;
            self.talking = true;
        } else {
            self.talking = false;
        }
        self.floor = if energy < self.floor {
            energy.max(FLOOR_MIN)
        } else {
            (self.floor * FLOOR_RISE_PER_TICK).min(energy)
        };
        self.talking
    }
}

/// Mean square of a frame (0 for an empty one).
fn mean_square(pcm: &[i16]) -> f32 {
    if pcm.is_empty() {
        return 0.0;
    }
    let sum: i64 = pcm.iter().map(|&s| i64::from(s) * i64::from(s)).sum();
    sum as f32 / pcm.len() as f32
}

fn rate_of(codec: CodecKind) -> u32 {
    codec.sample_rate()
}

/// What a participant received in the last tick.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Heard {
    /// Joined after the last tick: no output yet.
    Nothing,
    /// The shared full mix of their codec group.
    FullMix,
    /// Their own mix-minus, in `Participant::payload`.
    MixMinus,
}

struct Participant {
    id: PartId,
    codec: CodecKind,
    /// Index of this codec's shared group in `Mixer::groups`.
    group: usize,
    muted: bool,
    /// This tick's frame at the codec's rate, `samples_per_frame` long; zeros when none came.
    input: Vec<i16>,
    /// `put_frame` was called since the last tick.
    has_input: bool,
    /// `input` holds only zeros (no need to clear it again).
    input_is_zero: bool,
    /// `input` brought to the mix rate (only for narrowband talkers in a wideband room).
    upsampled: Vec<i16>,
    upsampler: Upsampler2x,
    /// Downsamples this participant's mix-minus when they are narrowband in a wideband room.
    downsampler: Downsampler2x,
    vad: VoiceDetector,
    /// Energy of this tick's frame, used to pick the loudest talkers.
    energy: f32,
    /// Summed in the mix this tick.
    mixed: bool,
    /// Encodes this participant's private mix-minus.
    encoder: Encoder,
    payload: Vec<u8>,
    heard: Heard,
}

impl Participant {
    fn new(id: PartId, codec: CodecKind, group: usize) -> Self {
        let samples = codec.samples_per_frame();
        Self {
            id,
            codec,
            group,
            muted: false,
            input: vec![0; samples],
            has_input: false,
            input_is_zero: true,
            upsampled: Vec::with_capacity(MAX_FRAME),
            upsampler: Upsampler2x::new(),
            downsampler: Downsampler2x::new(),
            vad: VoiceDetector::new(),
            energy: 0.0,
            mixed: false,
            encoder: Encoder::new(codec),
            payload: Vec::with_capacity(samples),
            heard: Heard::Nothing,
        }
    }

    /// This tick's frame at the mix rate (valid after the upsampling step of a tick).
    fn at_mix_rate(&self, mix_rate: u32) -> &[i16] {
        if rate_of(self.codec) < mix_rate {
            &self.upsampled
        } else {
            &self.input
        }
    }
}

/// The full mix, encoded once for every listener who uses `codec`.
struct SharedMix {
    codec: CodecKind,
    encoder: Encoder,
    payload: Vec<u8>,
    /// Of them, those who heard this group's mix in the last tick.
    listeners: usize,
}

/// A queued topology change, applied at the start of the next tick.
#[derive(Debug, Clone, Copy)]
enum Change {
    Add(PartId, CodecKind),
    Remove(PartId),
    Mute(PartId, bool),
}

/// One conference room's mixer. See the [module documentation](self).
pub struct Mixer {
    parts: Vec<Participant>,
    index: IdMap<PartId, usize>,
    pending: Vec<Change>,
    /// One per codec ever used in the room; never removed (there are only a few codecs).
    groups: Vec<SharedMix>,
    /// Participants whose codec runs at 16 kHz.
    wideband: usize,
    rate: u32,
    /// Indices into `parts` of this tick's mixed talkers, ascending.
    mixed: Vec<usize>,
    /// (energy, index) of the loudest unmuted talkers while they are picked.
    loudest: Vec<(f32, usize)>,
    /// The full mix at the mix rate, before and after limiting.
    sum: Vec<i32>,
    full: Vec<i16>,
    /// The full mix downsampled to 8 kHz (wideband rooms with narrowband listeners).
    full_narrow: Vec<i16>,
    full_downsampler: Downsampler2x,
    /// Scratch for one talker's mix-minus, at the mix rate and at 8 kHz.
    minus: Vec<i16>,
    minus_narrow: Vec<i16>,
    /// This tick's announcement (a join tone…) as handed in, at `announcement_rate`, then
    /// at the mix rate; empty when none.
    announcement_in: Vec<i16>,
    announcement_rate: u32,
    announcement: Vec<i16>,
    announcement_up: Upsampler2x,
    announcement_down: Downsampler2x,
    encodes: usize,
}

impl Default for Mixer {
    fn default() -> Self {
        Self::new()
    }
}

impl std::fmt::Debug for Mixer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Mixer")
            .field("participants", &self.parts.len())
            .field("pending_changes", &self.pending.len())
            .field("sample_rate", &self.rate)
            .field("mixed_talkers", &self.mixed.len())
            .finish_non_exhaustive()
    }
}

impl Mixer {
    /// An empty room, mixing at 8 kHz.
    pub fn new() -> Self {
        Self {
            parts: Vec::new(),
            index: IdMap::default(),
            pending: Vec::new(),
            groups: Vec::new(),
            wideband: 0,
            rate: NARROW_RATE,
            mixed: Vec::with_capacity(MAX_MIXED_TALKERS),
            loudest: Vec::with_capacity(MAX_MIXED_TALKERS + 1),
            sum: Vec::with_capacity(MAX_FRAME),
            full: Vec::with_capacity(MAX_FRAME),
            full_narrow: Vec::with_capacity(MAX_FRAME / 2),
            full_downsampler: Downsampler2x::new(),
            minus: Vec::with_capacity(MAX_FRAME),
            minus_narrow: Vec::with_capacity(MAX_FRAME / 2),
            announcement_in: Vec::with_capacity(MAX_FRAME),
            announcement_rate: NARROW_RATE,
            announcement: Vec::with_capacity(MAX_FRAME),
            announcement_up: Upsampler2x::new(),
            announcement_down: Downsampler2x::new(),
            encodes: 0,
        }
    }

    /// Queues the arrival of `id`, sending and receiving `codec`; it joins at the next tick.
    /// Adding an id already in the room replaces it (its codec may change).
    pub fn add(&mut self, id: PartId, codec: CodecKind) {
        self.pending.push(Change::Add(id, codec));
    }

    /// Queues the departure of `id`; it leaves at the next tick (its output stays readable
    /// until then). Unknown ids are ignored.
    pub fn remove(&mut self, id: PartId) {
        self.pending.push(Change::Remove(id));
    }

    /// Queues muting or unmuting `id` at the next tick. A muted participant is heard by
    /// nobody but still hears the room.
    pub fn set_muted(&mut self, id: PartId, muted: bool) {
        self.pending.push(Change::Mute(id, muted));
    }

    /// Hands in this tick's decoded 20 ms frame of `id`, at its codec's sample rate. A
    /// participant whose frame does not come before [`tick`](Self::tick) is silent for that
    /// tick. A short frame is padded with silence, a long one cut. Frames for ids not (yet)
    /// in the room are ignored.
    pub fn put_frame(&mut self, id: PartId, pcm: &[i16]) {
        let Some(&i) = self.index.get(&id) else {
            return;
        };
        let part = &mut self.parts[i];
        let n = pcm.len().min(part.input.len());
        part.input[..n].copy_from_slice(&pcm[..n]);
        if n < part.input.len() {
            part.input[n..].fill(0);
        }
        part.has_input = true;
        part.input_is_zero = false;
    }

    /// Hands in 20 ms of sound at `rate` (8000 or 16000) that everyone in the room hears
    /// this tick, talkers included, on top of the voices: a join or leave tone. It is not a
    /// participant: it is never picked or dropped as a talker, and nobody encodes for it.
    pub fn put_announcement(&mut self, pcm: &[i16], rate: u32) {
        self.announcement_in.clear();
        self.announcement_in.extend_from_slice(pcm);
        self.announcement_rate = rate;
    }

    /// The announcement brought to the mix rate (known once the tick's changes are in).
    fn resample_announcement(&mut self) {
        self.announcement.clear();
        let pcm = &self.announcement_in;
        if pcm.is_empty() {
            return;
        }
        if self.announcement_rate == self.rate {
            self.announcement.extend_from_slice(pcm);
        } else if self.announcement_rate < self.rate {
            self.announcement_up.process(pcm, &mut self.announcement);
        } else {
            self.announcement_down.process(pcm, &mut self.announcement);
        }
        self.announcement_in.clear();
    }

    /// Mixes this tick: applies queued changes, detects voice, sums the talkers, encodes the
    /// shared mix per codec and each talker's mix-minus. Afterwards [`output`](Self::output)
    /// holds every participant's payload.
    pub fn tick(&mut self) {
        self.apply_changes();
        self.resample_announcement();
        self.encodes = 0;
        self.detect_talkers();
        let rate = self.rate;
        let samples = (rate / 50) as usize;

        // Bring narrowband talkers to the mix rate, then sum.
        self.sum.clear();
        self.sum.resize(samples, 0);
        for &i in &self.mixed {
            let part = &mut self.parts[i];
            if rate_of(part.codec) < rate {
                part.upsampled.clear();
                part.upsampler.process(&part.input, &mut part.upsampled);
            }
            let pcm = part.at_mix_rate(rate);
            for (acc, &s) in self.sum.iter_mut().zip(pcm) {
                *acc += i32::from(s);
            }
        }
        for (acc, &s) in self.sum.iter_mut().zip(&self.announcement) {
            *acc += i32::from(s);
        }
        self.full.clear();
        self.full.extend(self.sum.iter().map(|&s| soft_limit(s)));

        // Who hears what.
        for group in &mut self.groups {
            group.listeners = 0;
        }
        for part in &mut self.parts {
            let was = part.heard;
            part.heard = if part.mixed {
                Heard::MixMinus
            } else {
                self.groups[part.group].listeners += 1;
                Heard::FullMix
            };
            if was == Heard::MixMinus && part.heard == Heard::FullMix {
                // Back to the shared mix: the private encoder's memory is not needed.
                part.encoder.release();
            }
        }

        // The shared full mix: one encode per codec that has listeners.
        let mut narrow_ready = false;
        for group in &mut self.groups {
            if group.listeners == 0 {
                continue;
            }
            group.payload.clear();
            let pcm = if rate_of(group.codec) < rate {
                if !narrow_ready {
                    self.full_narrow.clear();
                    self.full_downsampler
                        .process(&self.full, &mut self.full_narrow);
                    narrow_ready = true;
                }
                &self.full_narrow
            } else {
                &self.full
            };
            group.encoder.encode(pcm, &mut group.payload);
            self.encodes += 1;
        }

        // Each mixed talker's own mix-minus.
        for &i in &self.mixed {
            let part = &mut self.parts[i];
            self.minus.clear();
            let own = part.at_mix_rate(rate);
            self.minus.extend(
                self.sum
                    .iter()
                    .zip(own)
                    .map(|(&s, &o)| soft_limit(s - i32::from(o))),
            );
            part.payload.clear();
            if rate_of(part.codec) < rate {
                self.minus_narrow.clear();
                part.downsampler
                    .process(&self.minus, &mut self.minus_narrow);
                part.encoder.encode(&self.minus_narrow, &mut part.payload);
            } else {
                part.encoder.encode(&self.minus, &mut part.payload);
            }
            self.encodes += 1;
        }
    }

    /// The encoded 20 ms payload `id` receives this tick (`None` before its first tick in the
    /// room). Listeners who hear the same mix with the same codec get the same slice.
    pub fn output(&self, id: PartId) -> Option<&[u8]> {
        let part = &self.parts[*self.index.get(&id)?];
        match part.heard {
            Heard::Nothing => None,
            Heard::FullMix => Some(&self.groups[part.group].payload),
            Heard::MixMinus => Some(&part.payload),
        }
    }

    /// Whether `id` showed voice activity in the last tick (hangover included), muted or
    /// not: a console can show "you are talking while muted".
    pub fn is_talking(&self, id: PartId) -> bool {
        self.index
            .get(&id)
            .is_some_and(|&i| self.parts[i].vad.talking)
    }

    /// The participants summed in the last tick's mix: talking, not muted, and among the
    /// [`MAX_MIXED_TALKERS`] loudest.
    pub fn talkers(&self) -> impl Iterator<Item = PartId> + '_ {
        self.mixed.iter().map(|&i| self.parts[i].id)
    }

    /// The room's mixing rate: 16000 as soon as a 16 kHz (G.722) participant is in it, else
    /// 8000. Follows joins and leaves at tick boundaries.
    pub fn sample_rate(&self) -> u32 {
        self.rate
    }

    /// Encodes done in the last tick (one per codec group with listeners plus one per mixed
    /// talker): a metric, and how tests see that encodes are shared.
    pub fn encodes_last_tick(&self) -> usize {
        self.encodes
    }

    /// Participants in the room (queued arrivals not counted before their tick).
    pub fn len(&self) -> usize {
        self.parts.len()
    }

    /// Whether the room has no participant (queued arrivals not counted).
    pub fn is_empty(&self) -> bool {
        self.parts.is_empty()
    }

    fn apply_changes(&mut self) {
        if self.pending.is_empty() {
            return;
        }
        let mut pending = std::mem::take(&mut self.pending);
        for change in pending.drain(..) {
            match change {
                Change::Add(id, codec) => {
                    self.remove_now(id);
                    let group = self.group_for(codec);
                    if rate_of(codec) > NARROW_RATE {
                        self.wideband += 1;
                    }
                    self.index.insert(id, self.parts.len());
                    self.parts.push(Participant::new(id, codec, group));
                }
                Change::Remove(id) => self.remove_now(id),
                Change::Mute(id, muted) => {
                    if let Some(&i) = self.index.get(&id) {
                        self.parts[i].muted = muted;
                    }
                }
            }
        }
        // Give the (emptied) queue back so that its capacity is reused.
        self.pending = pending;
        let rate = if self.wideband > 0 {
            WIDE_RATE
        } else {
            NARROW_RATE
        };
        if rate != self.rate {
            self.rate = rate;
            self.full_downsampler = Downsampler2x::new();
            for part in &mut self.parts {
                part.upsampler = Upsampler2x::new();
                part.downsampler = Downsampler2x::new();
            }
        }
    }

    fn remove_now(&mut self, id: PartId) {
        let Some(i) = self.index.remove(&id) else {
            return;
        };
        let part = self.parts.swap_remove(i);
        if let Some(moved) = self.parts.get(i) {
            self.index.insert(moved.id, i);
        }
        if rate_of(part.codec) > NARROW_RATE {
            self.wideband -= 1;
        }
    }

    fn group_for(&mut self, codec: CodecKind) -> usize {
        if let Some(i) = self.groups.iter().position(|g| g.codec == codec) {
            return i;
        }
        self.groups.push(SharedMix {
            codec,
            encoder: Encoder::new(codec),
            payload: Vec::with_capacity(codec.samples_per_frame()),
            listeners: 0,
        });
        self.groups.len() - 1
    }

    /// Runs voice activity detection on every frame and picks this tick's mixed talkers:
    /// the [`MAX_MIXED_TALKERS`] loudest unmuted ones.
    fn detect_talkers(&mut self) {
        self.loudest.clear();
        for (i, part) in self.parts.iter_mut().enumerate() {
            part.energy = if part.has_input {
                mean_square(&part.input)
            } else {
                if !part.input_is_zero {
                    part.input.fill(0);
                    part.input_is_zero = true;
                }
                0.0
            };
            part.has_input = false;
            part.mixed = false;
            if part.vad.update(part.energy) && !part.muted {
                self.loudest.push((part.energy, i));
                if self.loudest.len() > MAX_MIXED_TALKERS {
                    // Drop the quietest so that the list never outgrows its capacity.
                    let quietest = (0..self.loudest.len())
                        .min_by(|&a, &b| self.loudest[a].0.total_cmp(&self.loudest[b].0))
                        .unwrap_or(0);
                    self.loudest.swap_remove(quietest);
                }
            }
        }
        self.mixed.clear();
        for &(_, i) in &self.loudest {
            self.parts[i].mixed = true;
            self.mixed.push(i);
        }
        // Participants in arrival order, whatever the order of their loudness.
        self.mixed.sort_unstable();
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;
    use crate::codec::Decoder;

    const AMP: f64 = 8_000.0;

    /// One 20 ms frame of a sine, phase-continuous across ticks.
    fn sine(freq: f64, amp: f64, codec: CodecKind, tick: usize) -> Vec<i16> {
        let rate = f64::from(codec.sample_rate());
        let n = codec.samples_per_frame();
        (0..n)
            .map(|k| {
                let t = (tick * n + k) as f64 / rate;
                (amp * (2.0 * std::f64::consts::PI * freq * t).sin()).round() as i16
            })
            .collect()
    }

    use crate::tone::amplitude as tone_amplitude;

    /// A room driven tick by tick, decoding what every participant receives.
    struct Room {
        mixer: Mixer,
        parts: Vec<(PartId, CodecKind, Option<f64>, Decoder)>,
        heard: HashMap<PartId, Vec<i16>>,
        ticks: usize,
        /// A tone (Hz) handed in as an announcement every tick, at the given codec's rate.
        announcement: Option<(f64, CodecKind)>,
    }

    impl Room {
        /// `(id, codec, tone)`: each participant sends a sine at `tone` Hz, or silence.
        fn new(parts: &[(PartId, CodecKind, Option<f64>)]) -> Self {
            let mut mixer = Mixer::new();
            for &(id, codec, _) in parts {
                mixer.add(id, codec);
            }
            Self {
                mixer,
                parts: parts
                    .iter()
                    .map(|&(id, codec, tone)| (id, codec, tone, Decoder::new(codec)))
                    .collect(),
                heard: HashMap::new(),
                ticks: 0,
                announcement: None,
            }
        }

        fn run(&mut self, ticks: usize) {
            let mut decoded = Vec::new();
            for _ in 0..ticks {
                for &(id, codec, tone, _) in &self.parts {
                    if let Some(freq) = tone {
                        self.mixer
                            .put_frame(id, &sine(freq, AMP, codec, self.ticks));
                    }
                }
                if let Some((freq, codec)) = self.announcement {
                    self.mixer
                        .put_announcement(&sine(freq, AMP, codec, self.ticks), codec.sample_rate());
                }
                self.mixer.tick();
                for (id, _, _, decoder) in &mut self.parts {
                    let payload = self.mixer.output(*id).expect("output after a tick");
                    decoded.clear();
                    decoder.decode(payload, &mut decoded);
                    self.heard
                        .entry(*id)
                        .or_default()
                        .extend_from_slice(&decoded);
                }
                self.ticks += 1;
            }
        }

        /// Amplitude of `freq` in the last `ticks` ticks `id` heard.
        fn heard_tone(&self, id: PartId, freq: f64, ticks: usize) -> f64 {
            let codec = self.parts.iter().find(|p| p.0 == id).unwrap().1;
            let heard = &self.heard[&id];
            let n = ticks * codec.samples_per_frame();
            tone_amplitude(&heard[heard.len() - n..], freq, codec.sample_rate())
        }

        fn assert_hears(&self, id: PartId, freq: f64) {
            let a = self.heard_tone(id, freq, 10);
            assert!(a > 0.7 * AMP, "{id} should hear {freq} Hz, amplitude {a}");
        }

        fn assert_not_hears(&self, id: PartId, freq: f64) {
            let a = self.heard_tone(id, freq, 10);
            assert!(
                a < 0.01 * AMP,
                "{id} should not hear {freq} Hz, amplitude {a}"
            );
        }
    }

    #[test]
    fn mixer_two_participants_hear_each_other_not_themselves() {
        let mut room = Room::new(&[
            (1, CodecKind::Pcmu, Some(440.0)),
            (2, CodecKind::Pcmu, Some(1000.0)),
        ]);
        room.run(20);
        room.assert_hears(1, 1000.0);
        room.assert_not_hears(1, 440.0);
        room.assert_hears(2, 440.0);
        room.assert_not_hears(2, 1000.0);
        assert_eq!(room.mixer.sample_rate(), 8000);
        assert_eq!(room.mixer.talkers().collect::<Vec<_>>(), [1, 2]);
        // Two private mix-minus encodes, no listener for the shared mix.
        assert_eq!(room.mixer.encodes_last_tick(), 2);
    }

    #[test]
    fn mixer_three_talkers_and_a_listener() {
        let mut room = Room::new(&[
            (1, CodecKind::Pcmu, Some(440.0)),
            (2, CodecKind::Pcmu, Some(1000.0)),
            (3, CodecKind::Pcma, Some(1750.0)),
            (4, CodecKind::Pcma, None),
        ]);
        room.run(20);
        let tones = [(1, 440.0), (2, 1000.0), (3, 1750.0)];
        for (listener, _) in tones {
            for (talker, freq) in tones {
                if listener == talker {
                    room.assert_not_hears(listener, freq);
                } else {
                    room.assert_hears(listener, freq);
                }
            }
        }
        for (_, freq) in tones {
            room.assert_hears(4, freq);
        }
        assert!(!room.mixer.is_talking(4));
        assert_eq!(room.mixer.encodes_last_tick(), 4);
    }

    #[test]
    fn mixer_muted_participant_is_heard_by_nobody_but_hears_the_room() {
        let mut room = Room::new(&[
            (1, CodecKind::Pcmu, Some(440.0)),
            (2, CodecKind::Pcmu, Some(1000.0)),
            (3, CodecKind::Pcmu, None),
        ]);
        room.mixer.set_muted(2, true);
        room.run(20);
        room.assert_not_hears(1, 1000.0);
        room.assert_not_hears(3, 1000.0);
        room.assert_hears(3, 440.0);
        room.assert_hears(2, 440.0);
        assert!(room.mixer.is_talking(2), "voice activity is still reported");
        assert_eq!(room.mixer.talkers().collect::<Vec<_>>(), [1]);
        // Unmuting takes effect at the next tick.
        room.mixer.set_muted(2, false);
        room.run(10);
        room.assert_hears(1, 1000.0);
        room.assert_hears(3, 1000.0);
    }

    #[test]
    fn mixer_join_and_leave_take_effect_at_a_tick_boundary() {
        let mut mixer = Mixer::new();
        assert!(mixer.is_empty());
        mixer.add(1, CodecKind::Pcmu);
        mixer.add(2, CodecKind::G722);
        assert_eq!(mixer.len(), 0);
        assert_eq!(mixer.output(1), None);
        assert_eq!(mixer.sample_rate(), 8000);
        mixer.put_frame(1, &[1000; 160]); // not in the room yet: ignored
        mixer.tick();
        assert_eq!(mixer.len(), 2);
        assert_eq!(mixer.sample_rate(), 16000);
        assert!(!mixer.is_talking(1));
        assert!(mixer.output(1).is_some() && mixer.output(2).is_some());

        mixer.remove(2);
        assert_eq!(mixer.len(), 2, "still in the room until the tick");
        assert!(mixer.output(2).is_some());
        assert_eq!(mixer.sample_rate(), 16000);
        mixer.tick();
        assert_eq!(mixer.len(), 1);
        assert_eq!(mixer.output(2), None);
        assert_eq!(mixer.sample_rate(), 8000);

        // Changes apply in call order: add then remove within one tick leaves nothing.
        mixer.add(3, CodecKind::Pcma);
        mixer.remove(3);
        mixer.remove(42);
        mixer.tick();
        assert_eq!(mixer.len(), 1);
        assert_eq!(mixer.output(3), None);
    }

    #[test]
    fn mixer_wideband_room_with_g722_and_g711() {
        let mut room = Room::new(&[
            (1, CodecKind::Pcmu, Some(440.0)),
            (2, CodecKind::G722, Some(1000.0)),
            (3, CodecKind::Pcma, None),
            (4, CodecKind::G722, None),
        ]);
        room.run(30);
        assert_eq!(room.mixer.sample_rate(), 16000);
        room.assert_hears(1, 1000.0);
        room.assert_not_hears(1, 440.0);
        room.assert_hears(2, 440.0);
        room.assert_not_hears(2, 1000.0);
        for listener in [3, 4] {
            room.assert_hears(listener, 440.0);
            room.assert_hears(listener, 1000.0);
        }
        // Two mix-minus encodes, the shared mix in PCMA and in G.722.
        assert_eq!(room.mixer.encodes_last_tick(), 4);
    }

    #[test]
    fn mixer_announcement_is_heard_by_everyone_and_costs_no_encode() {
        for (announced_at, room_codec) in [
            (CodecKind::Pcmu, CodecKind::Pcma),
            (CodecKind::Pcmu, CodecKind::G722),
            (CodecKind::G722, CodecKind::Pcmu),
        ] {
            let mut room = Room::new(&[
                (1, CodecKind::Pcmu, Some(440.0)),
                (2, room_codec, Some(1000.0)),
                (3, CodecKind::Pcma, None),
            ]);
            room.announcement = Some((1750.0, announced_at));
            room.run(30);
            for id in [1, 2, 3] {
                room.assert_hears(id, 1750.0);
            }
            room.assert_hears(3, 440.0);
            room.assert_not_hears(1, 440.0);
            // Two mix-minus encodes and the shared mix: nothing for the announcement.
            assert_eq!(room.mixer.encodes_last_tick(), 3);
            assert_eq!(room.mixer.talkers().count(), 2);
            // It lasts the ticks it is handed in for.
            room.announcement = None;
            room.run(10);
            room.assert_not_hears(3, 1750.0);
        }
    }

    #[test]
    fn mixer_silent_listeners_share_one_encode() {
        let mut mixer = Mixer::new();
        for id in 0..1000 {
            mixer.add(id, CodecKind::Pcmu);
        }
        let talkers = [10, 500, 999];
        for tick in 0..5 {
            for (k, &id) in talkers.iter().enumerate() {
                let freq = [440.0, 1000.0, 1750.0][k];
                mixer.put_frame(id, &sine(freq, AMP, CodecKind::Pcmu, tick));
            }
            for id in 0..1000 {
                if !talkers.contains(&id) {
                    mixer.put_frame(id, &[0; 160]);
                }
            }
            mixer.tick();
        }
        assert_eq!(mixer.encodes_last_tick(), 1 + talkers.len());
        let mut talking: Vec<_> = mixer.talkers().collect();
        talking.sort_unstable();
        assert_eq!(talking, talkers);
        let shared = mixer.output(0).unwrap();
        assert_eq!(shared.len(), 160);
        let listeners = (0..1000).filter(|id| !talkers.contains(id));
        for id in listeners {
            assert!(std::ptr::eq(mixer.output(id).unwrap(), shared), "{id}");
        }
        for id in talkers {
            let own = mixer.output(id).unwrap();
            assert!(!std::ptr::eq(own, shared));
            assert_ne!(own, shared, "a talker does not hear themselves");
        }
    }

    #[test]
    fn mixer_loud_mix_saturates_without_wrapping() {
        let mut mixer = Mixer::new();
        for id in 1..=4 {
            mixer.add(id, CodecKind::Pcmu);
        }
        mixer.tick(); // the arrivals are applied: from now on their frames count
        let mut decoder = Decoder::new(CodecKind::Pcmu);
        let mut decoded = Vec::new();
        let (mut wrapped, mut checked) = (0, 0);
        for tick in 0..10 {
            let loud = sine(400.0, 32_000.0, CodecKind::Pcmu, tick);
            for id in 1..=3 {
                mixer.put_frame(id, &loud);
            }
            mixer.tick();
            // The listener hears 3×, talker 1 hears 2× full scale.
            for (id, gain) in [(4, 3), (1, 2)] {
                decoded.clear();
                decoder.decode(mixer.output(id).unwrap(), &mut decoded);
                for (&x, &y) in loud.iter().zip(&decoded) {
                    let sum = gain * i32::from(x);
                    if sum.abs() > 2000 {
                        checked += 1;
                        let expected = i32::from(soft_limit(sum));
                        if (sum > 0) != (y > 0) || (i32::from(y) - expected).abs() > 1200 {
                            wrapped += 1;
                        }
                    }
                }
            }
        }
        assert!(checked > 2000);
        assert_eq!(wrapped, 0, "samples wrapped or far from the limited sum");
    }

    #[test]
    fn mixer_soft_limit_is_bounded_monotonic_and_transparent_below_the_knee() {
        for x in -LIMITER_KNEE..=LIMITER_KNEE {
            assert_eq!(i32::from(soft_limit(x)), x);
        }
        let mut last = soft_limit(-8 * 32_768);
        assert!(last > i16::MIN);
        for x in (-8 * 32_768..=8 * 32_768).step_by(7) {
            let y = soft_limit(x);
            assert!(y >= last, "not monotonic at {x}");
            assert_eq!(soft_limit(-x), -y, "not odd at {x}");
            last = y;
        }
        assert!(soft_limit(i32::MAX) < i16::MAX);
        assert!(soft_limit(i32::MIN + 1) > i16::MIN);
        assert!(soft_limit(i32::MIN) > i16::MIN);
    }

    #[test]
    fn mixer_silence_in_silence_out() {
        let mut room = Room::new(&[
            (1, CodecKind::Pcmu, None),
            (2, CodecKind::Pcma, None),
            (3, CodecKind::G722, None),
        ]);
        for tick in 0..20 {
            if tick % 2 == 0 {
                // Explicit zero frames or none at all: both are silence.
                room.mixer.put_frame(1, &[0; 160]);
                room.mixer.put_frame(3, &[0; 320]);
            }
            room.run(1);
        }
        assert_eq!(room.mixer.talkers().count(), 0);
        assert!(room.heard[&1].iter().all(|&s| s == 0));
        // A-law has no zero code: silence decodes to ±8.
        assert!(room.heard[&2].iter().all(|&s| s.abs() <= 8));
        // G.722's ADPCM may leave a few LSBs of residue; no comfort noise.
        assert!(room.heard[&3].iter().all(|&s| s.abs() < 16));
        assert_eq!(room.mixer.encodes_last_tick(), 3);
    }

    #[test]
    fn mixer_voice_activity_attacks_at_once_and_hangs_over() {
        let mut mixer = Mixer::new();
        mixer.add(1, CodecKind::Pcmu);
        mixer.tick();
        // Steady low noise (RMS ≈ 35) is never voice.
        let noise: Vec<i16> = (0..160)
            .map(|k| if k % 2 == 0 { 35 } else { -35 })
            .collect();
        for _ in 0..100 {
            mixer.put_frame(1, &noise);
            mixer.tick();
            assert!(!mixer.is_talking(1));
        }
        mixer.put_frame(1, &sine(440.0, 3_000.0, CodecKind::Pcmu, 0));
        mixer.tick();
        assert!(mixer.is_talking(1), "attack within one frame");
        let mut hang = 0;
        loop {
            mixer.put_frame(1, &noise);
            mixer.tick();
            if !mixer.is_talking(1) {
                break;
            }
            hang += 1;
        }
        assert_eq!(hang, usize::from(HANGOVER_TICKS));
    }

    #[test]
    fn mixer_mixes_only_the_loudest_talkers() {
        let mut mixer = Mixer::new();
        let n = MAX_MIXED_TALKERS as u64 + 4;
        for id in 0..n {
            mixer.add(id, CodecKind::Pcma);
        }
        mixer.tick();
        for id in 0..n {
            let amp = 1_000.0 + 500.0 * id as f64;
            mixer.put_frame(id, &sine(440.0, amp, CodecKind::Pcma, 0));
        }
        mixer.tick();
        let mut mixed: Vec<_> = mixer.talkers().collect();
        mixed.sort_unstable();
        assert_eq!(mixed, (4..n).collect::<Vec<_>>());
        assert!((0..n).all(|id| mixer.is_talking(id)));
        // The four quietest hear the shared mix, in one encode.
        assert_eq!(mixer.encodes_last_tick(), MAX_MIXED_TALKERS + 1);
        assert!(std::ptr::eq(
            mixer.output(0).unwrap(),
            mixer.output(3).unwrap()
        ));
    }
}
