//! DTMF digits from the three places a phone may put them: RFC 4733 telephone-event packets,
//! SIP INFO (parsed by the signalling layer, named here only as a [`DtmfSource`]), and tones in
//! the audio itself.
//!
//! RFC 4733 senders repeat every event packet and send the final ("end") packet three times,
//! because RTP is unreliable; the [`EventReceiver`] turns that into each digit exactly once.
//! The [`InbandDetector`] runs Goertzel filters at the eight DTMF frequencies and asks for the
//! evidence a telephone exchange would (both tones, little else, plausible twist, long enough,
//! a gap before a repeat) so that speech and hold music do not dial.

use crate::resample::Downsampler2x;
use crate::rtp::RtpHeader;
use crate::tone::{DTMF_COLS, DTMF_KEYS, DTMF_ROWS};

/// Where a digit came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum DtmfSource {
    /// RFC 4733 telephone-event RTP packets.
    Rfc4733,
    /// SIP INFO (`application/dtmf-relay` or `application/dtmf`).
    Info,
    /// Tones detected in the audio.
    Inband,
}

/// RFC 4733 event codes 0–15 as keypad characters.
const EVENT_DIGITS: [char; 16] = [
    '0', '1', '2', '3', '4', '5', '6', '7', '8', '9', '*', '#', 'A', 'B', 'C', 'D',
];

/// The keypad character of an RFC 4733 event code (0–15), or `None` for other events.
#[must_use]
pub fn event_digit(code: u8) -> Option<char> {
    EVENT_DIGITS.get(usize::from(code)).copied()
}

/// The RFC 4733 event code of a keypad character (`a-d` accepted).
#[must_use]
pub fn event_code(digit: char) -> Option<u8> {
    let digit = digit.to_ascii_uppercase();
    EVENT_DIGITS
        .iter()
        .position(|&d| d == digit)
        .map(|p| p as u8)
}

/// RFC 4733 event payload builder (for sending DTMF): `volume` is the level in −dBm0 (0–63),
/// `duration` in RTP timestamp units since the event began.
#[must_use]
pub fn event_payload(digit: char, end: bool, volume: u8, duration: u16) -> Option<[u8; 4]> {
    let code = event_code(digit)?;
    if volume > 63 {
        return None;
    }
    let [d0, d1] = duration.to_be_bytes();
    Some([code, (u8::from(end) << 7) | volume, d0, d1])
}

/// Ticks (20 ms) a relayed digit sounds: 100 ms, what phones send for a short press.
pub const SEND_TONE_TICKS: u32 = 5;
/// The end packet goes out this many times (RFC 4733 §2.5.1.4).
const SEND_END_REPEATS: u32 = 3;
/// Audio ticks between two relayed digits, so the far end tells them apart.
const SEND_GAP_TICKS: u32 = 3;
/// Digits waiting to be relayed, at most (a stuck key must not queue forever).
const SEND_QUEUE: usize = 32;

/// What a leg sends on one 20 ms tick while relaying digits.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SendTick {
    /// The usual audio frame.
    Audio,
    /// An RFC 4733 event packet instead of audio.
    Event(EventFrame),
}

/// One packet of an outgoing event: all packets of one event carry its start timestamp.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EventFrame {
    /// The key.
    pub digit: char,
    /// The event's first packet (marker bit, timestamp taken now).
    pub start: bool,
    /// One of the packets that end it (the E bit; sent three times).
    pub end: bool,
    /// 20 ms ticks since the event began, this one included.
    pub ticks: u32,
}

/// Plays queued digits as RFC 4733 events, one tick at a time: 100 ms of updates, the end
/// packet three times, then a gap. Sans-IO: the leg asks on every tick what to send.
#[derive(Clone, Debug, Default)]
pub struct EventSender {
    queue: std::collections::VecDeque<char>,
    /// The digit playing and the ticks it has played.
    current: Option<(char, u32)>,
    gap: u32,
}

impl EventSender {
    /// Queues `digit` (0-9, *, #, A-D); others, and digits past a full queue, are dropped.
    pub fn push(&mut self, digit: char) {
        if event_code(digit).is_some() && self.queue.len() < SEND_QUEUE {
            self.queue.push_back(digit.to_ascii_uppercase());
        }
    }

    /// Nothing is playing or queued.
    #[must_use]
    pub fn is_idle(&self) -> bool {
        self.current.is_none() && self.queue.is_empty()
    }

    /// What to send on this tick.
    pub fn tick(&mut self) -> SendTick {
        if self.current.is_none() {
            if self.gap > 0 {
                self.gap -= 1;
                return SendTick::Audio;
            }
            match self.queue.pop_front() {
                Some(d) => self.current = Some((d, 0)),
                None => return SendTick::Audio,
            }
        }
        let Some((digit, played)) = self.current.as_mut() else {
            return SendTick::Audio;
        };
        *played += 1;
        let n = *played;
        let digit = *digit;
        let end = n > SEND_TONE_TICKS;
        if n >= SEND_TONE_TICKS + SEND_END_REPEATS {
            self.current = None;
            self.gap = SEND_GAP_TICKS;
        }
        SendTick::Event(EventFrame {
            digit,
            start: n == 1,
            end,
            // The end packets repeat the final duration.
            ticks: n.min(SEND_TONE_TICKS),
        })
    }
}

#[derive(Clone, Copy, Debug)]
struct Event {
    timestamp: u32,
    digit: char,
    reported: bool,
}

/// RFC 4733 telephone-event receiver: de-duplicates retransmitted end packets and repeated
/// events (same timestamp), reports each digit once (on the first end packet, or on a new
/// event timestamp if the end was lost).
///
/// An event is identified by its RTP timestamp (RFC 4733 §2.5.1.2: all packets of one event
/// carry the timestamp of its start). Packets with a timestamp older than the current event
/// are stale retransmissions and ignored.
#[derive(Clone, Debug, Default)]
pub struct EventReceiver {
    current: Option<Event>,
    /// A second digit completed by the same packet (a lost end plus a one-packet event).
    queued: Option<char>,
}

impl EventReceiver {
    /// A receiver that has seen no event.
    #[must_use]
    pub fn new() -> Self {
        Self::default()
    }

    /// Reads one telephone-event packet; returns the digit it completes, if any. Call
    /// [`poll_digit`](Self::poll_digit) afterwards: rarely, one packet completes two digits.
    pub fn handle(&mut self, h: &RtpHeader, payload: &[u8]) -> Option<char> {
        let &[code, flags, _, _, ..] = payload else {
            return None;
        };
        let digit = event_digit(code)?;
        let end = flags & 0x80 != 0;
        if let Some(cur) = &mut self.current {
            if cur.timestamp == h.timestamp {
                if end && !cur.reported {
                    cur.reported = true;
                    return Some(cur.digit);
                }
                return None;
            }
            // Serial-number comparison: an older timestamp is a stale retransmission.
            if (h.timestamp.wrapping_sub(cur.timestamp) as i32) < 0 {
                return None;
            }
        }
        // A new event; the previous one is reported now if its end packets were all lost.
        let unreported = self.current.filter(|e| !e.reported).map(|e| e.digit);
        self.current = Some(Event {
            timestamp: h.timestamp,
            digit,
            reported: end,
        });
        match (unreported, end) {
            (Some(prev), true) => {
                self.queued = Some(digit);
                Some(prev)
            }
            (Some(prev), false) => Some(prev),
            (None, true) => Some(digit),
            (None, false) => None,
        }
    }

    /// A digit completed by the last [`handle`](Self::handle) call beyond the one it returned.
    pub fn poll_digit(&mut self) -> Option<char> {
        self.queued.take()
    }

    /// Reports the current event if its end never arrived; the stream calls this when no
    /// telephone-event packet has come for a while.
    pub fn flush(&mut self) -> Option<char> {
        let cur = self.current.as_mut().filter(|e| !e.reported)?;
        cur.reported = true;
        Some(cur.digit)
    }

    /// Forgets the current event (new SSRC: its timestamps are unrelated).
    pub fn reset(&mut self) {
        *self = Self::default();
    }
}

/// Samples per Goertzel block at 8 kHz (13.25 ms). Long enough to separate 697 from 770 Hz
/// (the first null of the block's response is 75 Hz wide), short enough that a 40 ms digit
/// always covers two whole blocks.
const BLOCK: usize = 106;
/// Consecutive steady blocks a digit must be seen in: a 40 ms tone always fills two blocks,
/// a 23 ms tone never does, so short blips are rejected as ITU-T Q.24 asks.
const HITS_NEEDED: u8 = 2;
/// Weakest accepted tone amplitude (about −44 dBFS per tone).
const MIN_AMPLITUDE: f32 = 200.0;
/// Twist limits (power ratios): the row tone may be up to 8 dB stronger than the column tone
/// ("normal" twist), the column up to 4 dB stronger ("reverse" twist).
const NORMAL_TWIST: f32 = 6.31;
const REVERSE_TWIST: f32 = 2.51;
/// Each winning tone must beat the others of its group by 8 dB.
const GROUP_MARGIN: f32 = 6.31;
/// The two tones must carry this share of the block's energy (speech and noise do not).
const MIN_TONE_SHARE: f32 = 0.6;

/// Each quarter of a block must hold this share of an even split of its energy (a steady
/// tone puts about a quarter in each; the two tones' beating moves it by ±30 %).
const MIN_QUARTER_SHARE: f32 = 0.4;

/// Goertzel DTMF detector on 8 kHz PCM (16 kHz input is decimated first).
#[derive(Clone, Debug)]
pub struct InbandDetector {
    down: Option<Downsampler2x>,
    narrow: Vec<i16>,
    /// 2·cos(2πf/8000) for the four rows then the four columns.
    coeff: [f32; 8],
    s1: [f32; 8],
    s2: [f32; 8],
    energy: f32,
    /// Energy of each quarter of the block: a tone that starts or stops mid-block leaves a
    /// quarter nearly empty, and such a block does not count towards the minimum duration.
    quarters: [f32; 4],
    filled: usize,
    /// The digit seen in the previous block(s) and for how many blocks in a row.
    candidate: Option<char>,
    hits: u8,
    /// The digit already reported and still held; cleared by a block without it.
    held: Option<char>,
}

impl InbandDetector {
    /// A detector for PCM at `sample_rate` (8000 or 16000; any other rate is treated as
    /// 8000).
    #[must_use]
    pub fn new(sample_rate: u32) -> Self {
        let mut coeff = [0f32; 8];
        for (c, f) in coeff.iter_mut().zip(DTMF_ROWS.iter().chain(&DTMF_COLS)) {
            *c = 2.0 * (std::f32::consts::TAU * *f as f32 / 8000.0).cos();
        }
        InbandDetector {
            down: (sample_rate == 16000).then(Downsampler2x::new),
            narrow: Vec::new(),
            coeff,
            s1: [0.0; 8],
            s2: [0.0; 8],
            energy: 0.0,
            quarters: [0.0; 4],
            filled: 0,
            candidate: None,
            hits: 0,
            held: None,
        }
    }

    /// Feeds PCM; returns a digit when one has just been recognised (once per key press).
    pub fn process(&mut self, pcm: &[i16]) -> Option<char> {
        let mut narrow = std::mem::take(&mut self.narrow);
        let samples: &[i16] = match &mut self.down {
            Some(down) => {
                narrow.clear();
                down.process(pcm, &mut narrow);
                &narrow
            }
            None => pcm,
        };
        let mut found = None;
        for &s in samples {
            let x = f32::from(s);
            self.energy += x * x;
            self.quarters[self.filled * 4 / BLOCK] += x * x;
            for i in 0..8 {
                let s0 = x + self.coeff[i] * self.s1[i] - self.s2[i];
                self.s2[i] = self.s1[i];
                self.s1[i] = s0;
            }
            self.filled += 1;
            if self.filled == BLOCK {
                if let Some(d) = self.end_block() {
                    found = Some(d);
                }
            }
        }
        self.narrow = narrow;
        found
    }

    /// Classifies the finished block and updates the debouncing state.
    fn end_block(&mut self) -> Option<char> {
        let digit = self.classify();
        self.s1 = [0.0; 8];
        self.s2 = [0.0; 8];
        self.energy = 0.0;
        self.quarters = [0.0; 4];
        self.filled = 0;

        if digit.is_some() && digit == self.candidate {
            self.hits = self.hits.saturating_add(1);
        } else {
            self.candidate = digit;
            self.hits = u8::from(digit.is_some());
        }
        if self.held.is_some() && self.held != digit {
            // The key was released (or another pressed): a repeat may be reported again.
            self.held = None;
        }
        if self.hits >= HITS_NEEDED && self.held.is_none() {
            self.held = digit;
            return digit;
        }
        None
    }

    /// The digit whose two tones dominate the current block, if the ITU-style checks pass.
    fn classify(&self) -> Option<char> {
        // |X|² of each Goertzel bin, as the energy of the sinusoid it represents.
        let tone: [f32; 8] = std::array::from_fn(|i| {
            let (a, b) = (self.s1[i], self.s2[i]);
            (a * a + b * b - self.coeff[i] * a * b) * 2.0 / BLOCK as f32
        });
        let best = |t: &[f32]| {
            let (i, &p) = t
                .iter()
                .enumerate()
                .max_by(|x, y| x.1.total_cmp(y.1))
                .unwrap_or((0, &0.0));
            let others_ok = t
                .iter()
                .enumerate()
                .all(|(j, &q)| j == i || q * GROUP_MARGIN <= p);
            (i, p, others_ok)
        };
        let (r, row, row_ok) = best(&tone[..4]);
        let (c, col, col_ok) = best(&tone[4..]);
        let steady = self
            .quarters
            .iter()
            .all(|&q| q >= MIN_QUARTER_SHARE * self.energy / 4.0);
        let min_energy = MIN_AMPLITUDE * MIN_AMPLITUDE * BLOCK as f32 / 2.0;
        let accepted = steady
            && row_ok
            && col_ok
            && row >= min_energy
            && col >= min_energy
            && row <= col * NORMAL_TWIST
            && col <= row * REVERSE_TWIST
            && row + col >= MIN_TONE_SHARE * self.energy;
        accepted.then(|| DTMF_KEYS[r][c])
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec::{CodecKind, Decoder, Encoder};
    use crate::tone::{DualTone, Tone};

    fn event(ts: u32, digit: char, end: bool, duration: u16) -> (RtpHeader, [u8; 4]) {
        let h = RtpHeader {
            payload_type: 101,
            timestamp: ts,
            ..RtpHeader::default()
        };
        (h, event_payload(digit, end, 10, duration).unwrap())
    }

    #[test]
    fn payload_and_codes() {
        assert_eq!(event_payload('5', true, 10, 800), Some([5, 0x8a, 3, 0x20]));
        assert_eq!(event_payload('#', false, 0, 0), Some([11, 0, 0, 0]));
        assert_eq!(event_payload('d', false, 0, 0), Some([15, 0, 0, 0]));
        assert_eq!(event_payload('x', false, 0, 0), None);
        assert_eq!(event_payload('1', false, 64, 0), None);
        for code in 0..16 {
            assert_eq!(event_code(event_digit(code).unwrap()), Some(code));
        }
        assert_eq!(event_digit(16), None);
    }

    #[test]
    fn one_digit_per_event_despite_repeats() {
        let mut rx = EventReceiver::new();
        let mut got = Vec::new();
        for d in [160u16, 320, 480, 640] {
            let (h, p) = event(1000, '7', false, d);
            got.extend(rx.handle(&h, &p));
        }
        for _ in 0..3 {
            let (h, p) = event(1000, '7', true, 800);
            got.extend(rx.handle(&h, &p));
        }
        // A late retransmission of the start.
        let (h, p) = event(1000, '7', false, 160);
        got.extend(rx.handle(&h, &p));
        assert_eq!(got, vec!['7']);
        assert_eq!(rx.flush(), None);
    }

    #[test]
    fn lost_end_is_reported_on_next_event_or_flush() {
        let mut rx = EventReceiver::new();
        let (h, p) = event(0, '1', false, 160);
        assert_eq!(rx.handle(&h, &p), None);
        // Next event is a single end packet: both digits come out, in order.
        let (h, p) = event(8000, '2', true, 400);
        assert_eq!(rx.handle(&h, &p), Some('1'));
        assert_eq!(rx.poll_digit(), Some('2'));
        assert_eq!(rx.poll_digit(), None);
        let (h, p) = event(16000, '3', false, 160);
        assert_eq!(rx.handle(&h, &p), None);
        assert_eq!(rx.flush(), Some('3'));
        assert_eq!(rx.flush(), None);
        // Stale (older) timestamp ignored.
        let (h, p) = event(8000, '2', true, 400);
        assert_eq!(rx.handle(&h, &p), None);
    }

    #[test]
    fn non_digit_events_and_garbage_are_ignored() {
        let mut rx = EventReceiver::new();
        let h = RtpHeader::default();
        assert_eq!(rx.handle(&h, &[]), None);
        assert_eq!(rx.handle(&h, &[1, 0x80]), None);
        assert_eq!(rx.handle(&h, &[16, 0x80, 0, 0]), None); // flash
        assert_eq!(rx.handle(&h, &[255, 0xff, 0xff, 0xff]), None);
        assert_eq!(rx.handle(&h, &[9, 0x80, 0, 0, 99, 99]), Some('9'));
    }

    /// A sender-side simulation of 1000 events across a timestamp wrap with duplicated,
    /// reordered and lost packets: every event with at least one surviving packet is
    /// reported once, in order.
    #[test]
    fn flood_of_1000_events() {
        let mut rng = 0x51f1_5eedu32;
        let mut next = move || {
            rng ^= rng << 13;
            rng ^= rng >> 17;
            rng ^= rng << 5;
            rng
        };
        let mut rx = EventReceiver::new();
        let mut sent = Vec::new();
        let mut got = Vec::new();
        let mut ts = u32::MAX - 100_000;
        for i in 0..1000 {
            let digit = EVENT_DIGITS[(next() % 16) as usize];
            let mut packets = Vec::new();
            for k in 1..=(next() % 6 + 1) as u16 {
                packets.push(event(ts, digit, false, 160 * k));
            }
            for _ in 0..3 {
                packets.push(event(ts, digit, true, 1200));
            }
            // Swap a pair and lose ~10 % (all of them for every 100th event).
            if packets.len() > 2 {
                packets.swap(0, 1);
            }
            let mut survived = false;
            for (h, p) in packets {
                if i % 100 == 99 || next() % 10 == 0 {
                    continue;
                }
                survived = true;
                got.extend(rx.handle(&h, &p));
                got.extend(rx.poll_digit());
            }
            if survived {
                sent.push(digit);
            }
            ts = ts.wrapping_add(1600);
        }
        got.extend(rx.flush());
        assert_eq!(got, sent);
        assert!(sent.len() > 980);
    }

    fn render(rate: u32, digits: &str, on_ms: u32, off_ms: u32, amp: i16) -> Vec<i16> {
        let mut out = Vec::new();
        let n = |ms: u32| (rate * ms / 1000) as usize;
        out.resize(n(30), 0);
        for d in digits.chars() {
            DualTone::dtmf(rate, d, amp)
                .unwrap()
                .fill(n(on_ms), &mut out);
            out.resize(out.len() + n(off_ms), 0);
        }
        out
    }

    fn detect(rate: u32, pcm: &[i16]) -> String {
        let mut det = InbandDetector::new(rate);
        let frame = (rate / 50) as usize;
        pcm.chunks(frame).filter_map(|f| det.process(f)).collect()
    }

    fn digits_200() -> String {
        (0..200)
            .map(|i| EVENT_DIGITS[(i * 7 + i / 16) % 16])
            .collect()
    }

    #[test]
    fn detects_200_digits_at_8_and_16_khz() {
        let digits = digits_200();
        for rate in [8000, 16000] {
            let pcm = render(rate, &digits, 50, 50, 6000);
            assert_eq!(detect(rate, &pcm), digits, "{rate} Hz");
        }
    }

    #[test]
    fn detects_through_g711_and_g722() {
        let digits = "0123456789*#ABCD";
        for kind in [CodecKind::Pcmu, CodecKind::Pcma, CodecKind::G722] {
            let rate = kind.sample_rate();
            let pcm = render(rate, digits, 60, 60, 4000);
            let (mut enc, mut dec) = (Encoder::new(kind), Decoder::new(kind));
            let (mut bytes, mut out) = (Vec::new(), Vec::new());
            for frame in pcm.chunks(kind.samples_per_frame()) {
                bytes.clear();
                enc.encode(frame, &mut bytes);
                dec.decode(&bytes, &mut out);
            }
            assert_eq!(detect(rate, &out), digits, "{kind:?}");
        }
    }

    #[test]
    fn repeated_digit_needs_a_pause_and_short_tones_are_rejected() {
        // One long press is one digit.
        assert_eq!(detect(8000, &render(8000, "5", 500, 0, 6000)), "5");
        // Two presses with a 40 ms gap are two digits.
        assert_eq!(detect(8000, &render(8000, "55", 45, 40, 6000)), "55");
        // A 40 ms press is a digit whatever its alignment to the detector's blocks.
        for offset in 0..BLOCK {
            let mut pcm = vec![0; offset];
            pcm.extend(render(8000, "8", 40, 40, 6000));
            assert_eq!(detect(8000, &pcm), "8", "offset {offset}");
        }
        // 20 ms blips are not digits.
        assert_eq!(detect(8000, &render(8000, "123", 20, 60, 6000)), "");
        // Too quiet (−50 dBFS) is not a digit.
        assert_eq!(detect(8000, &render(8000, "1", 100, 10, 100)), "");
    }

    #[test]
    fn twist_limits() {
        let n = 800;
        let make = |row_amp: i16, col_amp: i16| {
            let (mut a, mut b) = (Vec::new(), Vec::new());
            Tone::new(8000, 770.0, row_amp).fill(n, &mut a);
            Tone::new(8000, 1336.0, col_amp).fill(n, &mut b);
            a.iter().zip(&b).map(|(x, y)| x + y).collect::<Vec<i16>>()
        };
        assert_eq!(detect(8000, &make(6000, 3000)), "5"); // row 6 dB stronger: fine
        assert_eq!(detect(8000, &make(6000, 1500)), ""); // 12 dB: too much
        assert_eq!(detect(8000, &make(4000, 6000)), "5"); // column 3.5 dB stronger
        assert_eq!(detect(8000, &make(2000, 6000)), ""); // 9.5 dB reverse twist
    }

    #[test]
    fn no_digits_from_sweeps_noise_or_single_tones() {
        for rate in [8000u32, 16000] {
            // A slow sine sweep 300–3400 Hz over 10 s, and a faster one.
            for secs in [10.0, 1.0] {
                let n = (f64::from(rate) * secs) as usize;
                let mut phase = 0.0f64;
                let sweep: Vec<i16> = (0..n)
                    .map(|i| {
                        let f = 300.0 + 3100.0 * i as f64 / n as f64;
                        phase += f / f64::from(rate);
                        (12000.0 * (std::f64::consts::TAU * phase).sin()) as i16
                    })
                    .collect();
                assert_eq!(detect(rate, &sweep), "", "sweep {secs}s at {rate}");
            }
            // White noise at several levels.
            let mut rng = 12345u32;
            for amp in [200, 2000, 20000] {
                let noise: Vec<i16> = (0..rate as usize * 5)
                    .map(|_| {
                        rng ^= rng << 13;
                        rng ^= rng >> 17;
                        rng ^= rng << 5;
                        ((rng >> 16) as i16 as i32 * amp / 32768) as i16
                    })
                    .collect();
                assert_eq!(detect(rate, &noise), "", "noise {amp} at {rate}");
            }
            // A dial-tone-like pair that is not DTMF (350 + 440 Hz).
            let mut dial = Vec::new();
            DualTone::new(rate, 350.0, 440.0, 8000).fill(rate as usize, &mut dial);
            assert_eq!(detect(rate, &dial), "");
        }
    }

    #[test]
    fn detector_tolerates_frequency_error() {
        // ±1.5 % off-nominal tones still pass (Q.24 requires acceptance within 1.5 %).
        for factor in [0.985, 1.015] {
            let mut pcm = Vec::new();
            DualTone::new(8000, 852.0 * factor, 1477.0 * factor, 6000).fill(800, &mut pcm);
            assert_eq!(detect(8000, &pcm), "9", "factor {factor}");
        }
    }
}
