//! The bridge driven on a simulated network by phones that speak RTP as desk phones do.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use confero_sim::{Driver, Link, SimNet};

use super::*;
use crate::codec::Decoder;
use crate::dtmf::event_payload;
use crate::rtp::{is_rtcp, parse_rtp, write_rtp, RtpHeader};
use crate::tone::Tone;

const PBX_IP: IpAddr = IpAddr::V4(Ipv4Addr::new(10, 0, 0, 1));
const AMP: i16 = 8000;

fn pbx(port: u16) -> SocketAddr {
    SocketAddr::new(PBX_IP, port)
}

/// A desk phone on one leg: sends a 20 ms PCMU frame of its tone (or silence) on its own
/// clock, keeps every packet the bridge sends it.
struct Phone {
    addr: SocketAddr,
    leg: LegId,
    /// The bridge's port for this leg.
    port: u16,
    tone: Option<Tone>,
    sending: bool,
    next_send: Instant,
    seq: u16,
    ts: u32,
    ssrc: u32,
    encoder: Encoder,
    /// Audio payloads received, by arrival.
    audio: Vec<Vec<u8>>,
    /// Each audio packet's arrival, sequence number and timestamp.
    audio_at: Vec<(Instant, u16, u32)>,
    /// RFC 4733 payloads received.
    events: Vec<[u8; 4]>,
    /// RTCP received: (from port, to port).
    rtcp: Vec<(u16, u16)>,
}

impl Phone {
    fn new(n: u8, leg: LegId, port: u16, freq: Option<f64>, t0: Instant) -> Phone {
        Phone {
            addr: SocketAddr::from(([10, 0, 1, n], 4000)),
            leg,
            port,
            tone: freq.map(|f| Tone::new(8000, f, AMP)),
            sending: true,
            next_send: t0,
            seq: u16::from(n) * 1000,
            ts: u32::from(n) * 100_000,
            ssrc: 0xabc0 + u32::from(n),
            encoder: Encoder::new(CodecKind::Pcmu),
            audio: Vec::new(),
            audio_at: Vec::new(),
            events: Vec::new(),
            rtcp: Vec::new(),
        }
    }

    fn media(&self) -> LegMedia {
        LegMedia {
            codec: CodecKind::Pcmu,
            payload_type: 0,
            dtmf_payload_type: Some(101),
            remote: self.addr,
            two_way: true,
        }
    }

    fn open(&self) -> MediaCommand {
        MediaCommand::Open {
            leg: self.leg,
            port: self.port,
            media: self.media(),
            rtcp_mux: true,
            signalled_from: self.addr.ip(),
        }
    }

    fn packet(&mut self, pt: u8, marker: bool, payload: &[u8]) -> Vec<u8> {
        let h = RtpHeader {
            payload_type: pt,
            marker,
            sequence: self.seq,
            timestamp: self.ts,
            ssrc: self.ssrc,
        };
        self.seq = self.seq.wrapping_add(1);
        let mut out = Vec::new();
        write_rtp(&h, payload, &mut out);
        out
    }

    /// This tick's audio packet.
    fn frame(&mut self) -> Vec<u8> {
        let mut pcm = Vec::new();
        match self.tone.as_mut() {
            Some(t) => t.fill(160, &mut pcm),
            None => pcm.resize(160, 0),
        }
        let mut payload = Vec::new();
        self.encoder.encode(&pcm, &mut payload);
        let p = self.packet(0, false, &payload);
        self.ts = self.ts.wrapping_add(160);
        p
    }

    /// One digit as a phone sends it: three event packets and three ends, one timestamp.
    fn digit(&mut self, digit: char) -> Vec<Vec<u8>> {
        let mut out = Vec::new();
        for (i, end) in [false, false, false, true, true, true]
            .into_iter()
            .enumerate()
        {
            let duration = 160 * (i.min(3) as u16 + 1);
            let payload = event_payload(digit, end, 10, duration).unwrap();
            out.push(self.packet(101, i == 0, &payload));
        }
        self.ts = self.ts.wrapping_add(160 * 4);
        out
    }

    fn receive(&mut self, now: Instant, from: SocketAddr, to: SocketAddr, data: &[u8]) {
        if is_rtcp(data) {
            self.rtcp.push((from.port(), to.port()));
            return;
        }
        let (h, payload) = parse_rtp(data).expect("the bridge sends valid RTP");
        match h.payload_type {
            0 => {
                self.audio.push(payload.to_vec());
                self.audio_at.push((now, h.sequence, h.timestamp));
            }
            101 => self.events.push(payload.try_into().unwrap()),
            pt => panic!("payload type {pt}"),
        }
    }

    /// The last `frames` frames it heard, decoded.
    fn heard(&self, frames: usize) -> Vec<i16> {
        let mut dec = Decoder::new(CodecKind::Pcmu);
        let mut pcm = Vec::new();
        let from = self.audio.len().saturating_sub(frames);
        for p in &self.audio[from..] {
            dec.decode(p, &mut pcm);
        }
        pcm
    }
}

/// Amplitude of `freq` in 8 kHz `pcm`.
fn amplitude(pcm: &[i16], freq: f64) -> f64 {
    crate::tone::amplitude(pcm, freq, 8000)
}

fn rms(pcm: &[i16]) -> f64 {
    let sum: f64 = pcm.iter().map(|&s| f64::from(s) * f64::from(s)).sum();
    (sum / pcm.len().max(1) as f64).sqrt()
}

/// Bridges (one per media thread), their phones and the network between them, on one
/// virtual clock.
struct World {
    bridges: Vec<Bridge>,
    /// Virtual CPU time each bridge's tick takes: a bridge whose tick costs more than
    /// 20 ms is overloaded, driven only once its last tick is done.
    tick_cost: Vec<Duration>,
    busy_until: Vec<Instant>,
    /// Datagrams that reached a busy bridge's ports, read when it is next driven.
    inbox: Vec<Vec<(u16, SocketAddr, Vec<u8>)>>,
    net: SimNet,
    driver: Driver,
    phones: Vec<Phone>,
    events: Vec<(Duration, MediaEvent)>,
    prompts: Arc<PromptLibrary>,
}

impl World {
    /// `uplink` is the phones' path to the bridge; the bridge's path to them is perfect, so
    /// that what a phone "heard" is what the bridge sent, in order.
    fn new(seed: u64, uplink: Link, rtp_timeout: Duration) -> World {
        World::with_bridges(1, seed, uplink, rtp_timeout)
    }

    fn with_bridges(n: usize, seed: u64, uplink: Link, rtp_timeout: Duration) -> World {
        let t0 = Instant::now();
        let prompts = Arc::new(PromptLibrary::builtin());
        let bridges = (0..n as u64)
            .map(|i| {
                let cfg = BridgeConfig {
                    public_ip: PBX_IP,
                    rtp_timeout,
                    seed: seed + i,
                };
                Bridge::new(cfg, prompts.clone(), t0, Duration::from_secs(1_800_000_000))
            })
            .collect();
        World {
            bridges,
            tick_cost: vec![Duration::ZERO; n],
            busy_until: vec![t0; n],
            inbox: vec![Vec::new(); n],
            net: SimNet::new(seed, uplink),
            driver: Driver::new(t0),
            phones: Vec::new(),
            events: Vec::new(),
            prompts,
        }
    }

    fn bridge(&self) -> &Bridge {
        &self.bridges[0]
    }

    fn now(&self) -> Instant {
        self.driver.now()
    }

    /// Adds a phone on leg `n` (port 20000 + 2n) and opens its leg.
    fn phone(&mut self, n: u8, freq: Option<f64>) -> usize {
        self.phone_on(0, n, freq)
    }

    /// Adds a phone whose leg opens on bridge `b`.
    fn phone_on(&mut self, b: usize, n: u8, freq: Option<f64>) -> usize {
        let phone = Phone::new(
            n,
            LegId(u64::from(n)),
            20000 + 2 * u16::from(n),
            freq,
            self.now(),
        );
        let open = phone.open();
        // The bridge sends to phones over a perfect path.
        self.net
            .set_path(pbx(phone.port), phone.addr, Link::PERFECT);
        self.phones.push(phone);
        self.command_on(b, open);
        self.phones.len() - 1
    }

    fn command(&mut self, cmd: MediaCommand) {
        self.command_on(0, cmd);
    }

    fn command_on(&mut self, b: usize, cmd: MediaCommand) {
        let now = self.now();
        self.bridges[b].handle_command(now, cmd);
        self.flush(now);
    }

    /// A phone's datagram to its leg's port, through the network.
    fn send_from(&mut self, phone: usize, data: &[u8]) {
        let now = self.now();
        let p = &self.phones[phone];
        self.net.send(now, p.addr, pbx(p.port), data);
    }

    fn flush(&mut self, now: Instant) {
        for bridge in &mut self.bridges {
            while let Some(t) = bridge.poll_transmit() {
                self.net.send(now, pbx(t.from_port), t.to, t.data);
            }
        }
        let at = self.driver.elapsed();
        for bridge in &mut self.bridges {
            while let Some(ev) = bridge.poll_event() {
                self.events.push((at, ev));
            }
        }
    }

    /// When bridge `b` is next driven: its tick, once it is done with the last one.
    fn drive_at(&self, b: usize) -> Instant {
        self.bridges[b].poll_timeout().max(self.busy_until[b])
    }

    /// Runs the world for `d` of simulated time.
    fn run(&mut self, d: Duration) {
        let end = self.now() + d;
        loop {
            let bridges = (0..self.bridges.len()).map(|b| self.drive_at(b)).min();
            let wakeups = [
                bridges,
                self.net.next_delivery(),
                self.phones
                    .iter()
                    .filter(|p| p.sending)
                    .map(|p| p.next_send)
                    .min(),
            ];
            let now = match self.driver.step(wakeups).expect("no livelock") {
                Some(now) if now < end => now,
                _ => break,
            };
            while let Some(d) = self.net.deliver(now) {
                if d.to.ip() == PBX_IP {
                    let port = d.to.port();
                    let Some(b) = self
                        .bridges
                        .iter()
                        .position(|b| b.ports.contains_key(&port))
                    else {
                        continue;
                    };
                    if self.busy_until[b] > now {
                        self.inbox[b].push((port, d.from, d.data));
                    } else {
                        self.bridges[b].handle_datagram(now, port, d.from, &d.data);
                    }
                } else if let Some(p) = self.phones.iter_mut().find(|p| p.addr.ip() == d.to.ip()) {
                    p.receive(now, d.from, d.to, &d.data);
                }
            }
            for i in 0..self.phones.len() {
                if self.phones[i].sending && self.phones[i].next_send <= now {
                    self.phones[i].next_send += TICK;
                    let frame = self.phones[i].frame();
                    self.send_from(i, &frame);
                }
            }
            for b in 0..self.bridges.len() {
                if self.drive_at(b) > now {
                    continue;
                }
                for (port, from, data) in std::mem::take(&mut self.inbox[b]) {
                    self.bridges[b].handle_datagram(now, port, from, &data);
                }
                self.bridges[b].handle_timeout(now);
                self.busy_until[b] = now + self.tick_cost[b];
            }
            self.flush(now);
        }
    }

    fn events_of(&self, leg: LegId) -> Vec<(Duration, MediaEvent)> {
        let leg_of = |ev: &MediaEvent| match ev {
            MediaEvent::Digit { leg, .. }
            | MediaEvent::PlaybackDone { leg, .. }
            | MediaEvent::Talking { leg, .. }
            | MediaEvent::Stats { leg, .. }
            | MediaEvent::WebRtcOffer { leg, .. }
            | MediaEvent::WebRtcAnswer { leg, .. }
            | MediaEvent::WebRtcRefused { leg, .. }
            | MediaEvent::Failed { leg, .. } => *leg,
        };
        self.events
            .iter()
            .filter(|(_, ev)| leg_of(ev) == leg)
            .cloned()
            .collect()
    }
}

/// Phones lose 5 %, duplicate 2 % and reorder (up to 40 ms of jitter) on their way in.
fn rough_uplink() -> Link {
    Link {
        loss: 0.05,
        duplicate: 0.02,
        delay: Duration::from_millis(10),
        jitter: Duration::from_millis(40),
    }
}

#[test]
fn talkers_hear_each_other_not_themselves_and_a_listener_hears_both_through_a_rough_network() {
    for seed in [1, 2, 3] {
        let mut w = World::new(seed, rough_uplink(), Duration::from_secs(30));
        let a = w.phone(1, Some(440.0));
        let b = w.phone(2, Some(1000.0));
        let c = w.phone(3, None);
        for p in [a, b, c] {
            let leg = w.phones[p].leg;
            w.command(MediaCommand::Mix {
                leg,
                mix: MixId::Room(7),
            });
        }
        w.run(Duration::from_secs(3));
        let net = w.net.stats();
        assert!(
            net.lost > 0 && net.reordered > 0 && net.duplicated > 0,
            "seed {seed}: {net:?}"
        );
        let last_second = 50;
        let (ha, hb, hc) = (
            w.phones[a].heard(last_second),
            w.phones[b].heard(last_second),
            w.phones[c].heard(last_second),
        );
        let loud = f64::from(AMP) * 0.5;
        let faint = f64::from(AMP) * 0.02;
        assert!(amplitude(&ha, 1000.0) > loud, "seed {seed}: A hears B");
        assert!(
            amplitude(&ha, 440.0) < faint,
            "seed {seed}: A does not hear itself"
        );
        assert!(amplitude(&hb, 440.0) > loud, "seed {seed}: B hears A");
        assert!(
            amplitude(&hb, 1000.0) < faint,
            "seed {seed}: B does not hear itself"
        );
        assert!(
            amplitude(&hc, 440.0) > loud && amplitude(&hc, 1000.0) > loud,
            "seed {seed}"
        );
        // One packet per tick to each (3 s: 150 ticks).
        for p in &w.phones {
            assert!((148..=151).contains(&p.audio.len()), "{}", p.audio.len());
        }
        // The talkers were reported talking, the silent listener never.
        for (p, talks) in [(a, true), (b, true), (c, false)] {
            let leg = w.phones[p].leg;
            let talking = w
                .events_of(leg)
                .iter()
                .any(|(_, e)| matches!(e, MediaEvent::Talking { talking: true, .. }));
            assert_eq!(talking, talks, "seed {seed}, leg {leg}");
        }
        assert_eq!(w.bridge().mix_count(), 1);
    }
}

#[test]
fn a_prompt_plays_to_its_end_then_the_leg_hears_the_room() {
    let mut w = World::new(4, Link::PERFECT, Duration::from_secs(30));
    let a = w.phone(1, None);
    let b = w.phone(2, Some(1000.0));
    let (leg_a, leg_b) = (w.phones[a].leg, w.phones[b].leg);
    w.command(MediaCommand::Mix {
        leg: leg_b,
        mix: MixId::Room(1),
    });
    w.command(MediaCommand::Play {
        leg: leg_a,
        prompts: vec![Prompt::EnterAccessCode],
        then_music: false,
        seq: 7,
    });
    let length = w.prompts.duration(Prompt::EnterAccessCode);
    w.run(length / 2);
    // The prompt is speech: loud, and not B's tone (A is in no mix).
    let heard = w.phones[a].heard(10);
    assert!(rms(&heard) > 300.0, "rms {}", rms(&heard));
    assert!(amplitude(&heard, 1000.0) < 100.0);
    w.run(length);
    let done: Vec<_> = w
        .events_of(leg_a)
        .into_iter()
        .filter(|(_, e)| matches!(e, MediaEvent::PlaybackDone { .. }))
        .collect();
    assert_eq!(done.len(), 1, "{done:?}");
    let (at, ev) = &done[0];
    assert_eq!(ev, &MediaEvent::PlaybackDone { leg: leg_a, seq: 7 });
    assert!(
        at.abs_diff(length) <= TICK * 2,
        "done at {at:?}, the prompt lasts {length:?}"
    );
    // After the prompt: silence, until A is mixed with B.
    assert!(rms(&w.phones[a].heard(10)) < 50.0);
    w.command(MediaCommand::Mix {
        leg: leg_a,
        mix: MixId::Room(1),
    });
    w.run(Duration::from_secs(1));
    assert!(amplitude(&w.phones[a].heard(25), 1000.0) > f64::from(AMP) * 0.5);
    // A join tone is heard by everyone in the mix, on top of the voices.
    let before = w.phones[b].audio.len();
    w.command(MediaCommand::MixTone {
        mix: MixId::Room(1),
        tone: Prompt::JoinTone,
    });
    w.run(w.prompts.duration(Prompt::JoinTone));
    let tone_frames = w.phones[b].audio.len() - before;
    let with_tone = w.phones[b].heard(tone_frames);
    assert!(rms(&with_tone) > 300.0, "B (alone talking) hears the tone");
}

#[test]
fn hold_music_loops_after_the_prompts() {
    let mut w = World::new(5, Link::PERFECT, Duration::from_secs(30));
    let a = w.phone(1, None);
    let leg = w.phones[a].leg;
    w.command(MediaCommand::Play {
        leg,
        prompts: vec![Prompt::WaitForAdministrator],
        then_music: true,
        seq: 1,
    });
    let prompt = w.prompts.duration(Prompt::WaitForAdministrator);
    w.run(prompt + Duration::from_secs(20));
    // Music, not silence, long after the prompt ended (and past the music's own length).
    assert!(rms(&w.phones[a].heard(50)) > 300.0);
}

#[test]
fn a_leg_that_stops_sending_fails_after_the_rtp_timeout_and_a_held_one_never() {
    let mut w = World::new(6, Link::PERFECT, Duration::from_secs(2));
    let a = w.phone(1, Some(440.0));
    let held = Phone::new(2, LegId(2), 20004, None, w.now());
    let mut media = held.media();
    media.two_way = false;
    w.command(MediaCommand::Open {
        leg: LegId(2),
        port: 20004,
        media,
        rtcp_mux: true,
        signalled_from: held.addr.ip(),
    });
    w.run(Duration::from_secs(1));
    w.phones[a].sending = false;
    w.run(Duration::from_secs(8));
    let failed: Vec<_> = w
        .events
        .iter()
        .filter(|(_, e)| matches!(e, MediaEvent::Failed { .. }))
        .collect();
    assert_eq!(failed.len(), 1, "once, and only the silent one: {failed:?}");
    let (at, ev) = failed[0];
    assert!(
        matches!(ev, MediaEvent::Failed { leg: LegId(1), reason } if reason.contains("no RTP"))
    );
    // 1 s of audio, then 2 s of silence.
    let expected = Duration::from_secs(3);
    assert!(at.abs_diff(expected) <= TICK * 2, "failed at {at:?}");
}

#[test]
fn digits_go_in_as_events_and_relayed_digits_come_out_as_rfc4733() {
    let mut w = World::new(8, rough_uplink(), Duration::from_secs(30));
    let a = w.phone(1, None);
    let b = w.phone(2, None);
    w.run(Duration::from_millis(200));
    for (i, digit) in ['1', '2', '#'].into_iter().enumerate() {
        for packet in w.phones[a].digit(digit) {
            w.send_from(a, &packet);
        }
        w.run(Duration::from_millis(300 + 10 * i as u64));
    }
    let digits: Vec<char> = w
        .events_of(LegId(1))
        .iter()
        .filter_map(|(_, e)| match e {
            MediaEvent::Digit { digit, .. } => Some(*digit),
            _ => None,
        })
        .collect();
    assert_eq!(digits, ['1', '2', '#']);

    // A digit relayed to B goes out as telephone-events on B's agreed number, begin to end.
    let leg_b = w.phones[b].leg;
    w.command(MediaCommand::SendDigit {
        leg: leg_b,
        digit: '9',
    });
    w.run(Duration::from_millis(500));
    let events = &w.phones[b].events;
    assert!(events.len() >= 3, "{events:?}");
    assert!(events.iter().all(|e| e[0] == 9));
    assert!(
        events.last().is_some_and(|e| e[1] & 0x80 != 0),
        "ends with the E bit"
    );
}

#[test]
fn rtcp_goes_from_the_next_port_to_the_next_port_without_mux() {
    let mut w = World::new(9, Link::PERFECT, Duration::from_secs(30));
    let phone = Phone::new(1, LegId(1), 20002, Some(440.0), w.now());
    let open = MediaCommand::Open {
        leg: LegId(1),
        port: 20002,
        media: phone.media(),
        rtcp_mux: false,
        signalled_from: phone.addr.ip(),
    };
    w.phones.push(phone);
    w.command(open);
    w.run(Duration::from_secs(9));
    // Reports every 5 s give or take half (RFC 3550): at least one in 9 s, none on the
    // RTP port.
    let rtcp = &w.phones[0].rtcp;
    assert!(!rtcp.is_empty());
    assert!(rtcp.iter().all(|&r| r == (20003, 4001)), "{rtcp:?}");
}

#[test]
fn a_stranger_never_takes_a_silent_leg_and_a_closed_leg_is_forgotten() {
    let mut w = World::new(10, Link::PERFECT, Duration::from_secs(30));
    let a = w.phone(1, Some(440.0));
    let b = w.phone(2, None);
    for p in [a, b] {
        let leg = w.phones[p].leg;
        w.command(MediaCommand::Mix {
            leg,
            mix: MixId::Room(3),
        });
    }
    // B sends nothing (no packet at all, as before its first); a stranger sends RTP to
    // B's port all along.
    w.phones[b].sending = false;
    let stranger = SocketAddr::from(([192, 0, 2, 9], 5000));
    let mut fake = Phone::new(9, LegId(99), 20004, Some(1000.0), w.now());
    for _ in 0..100 {
        let frame = fake.frame();
        let now = w.now();
        w.net.send(now, stranger, pbx(20004), &frame);
        w.run(TICK);
    }
    // A hears nothing of the stranger; nothing was sent to the stranger.
    assert!(amplitude(&w.phones[a].heard(50), 1000.0) < 100.0);
    assert!(w.bridge().legs[&LegId(2)].stream.stats().foreign >= 99);
    // Closing A and B forgets them: ports free, the room gone.
    w.command(MediaCommand::Close { leg: LegId(1) });
    w.command(MediaCommand::Close { leg: LegId(2) });
    assert_eq!((w.bridge().leg_count(), w.bridge().mix_count()), (0, 0));
    assert!(w.bridge().ports.is_empty());
    w.phones[a].sending = false;
    let sent = w.net.stats().sent;
    w.run(Duration::from_secs(1));
    assert_eq!(w.net.stats().sent, sent, "the bridge sends nothing more");
}

/// Driven 250 ms late (an overloaded or suspended machine), the bridge skips the ticks it
/// missed instead of slipping: the next packet's RTP timestamp is where media time is, it
/// starts a new talkspurt (marker), sequence numbers stay contiguous, and the overrun is
/// counted. Before, the clock restarted at the late instant and every later timestamp lagged
/// the wall clock for good.
#[test]
fn a_late_bridge_skips_frames_and_keeps_timestamps_with_the_clock() {
    let t0 = Instant::now();
    let cfg = BridgeConfig {
        public_ip: PBX_IP,
        rtp_timeout: Duration::from_secs(30),
        seed: 1,
    };
    let mut bridge = Bridge::new(cfg, Arc::new(PromptLibrary::builtin()), t0, Duration::ZERO);
    let phone = Phone::new(1, LegId(1), 20_000, None, t0);
    bridge.handle_command(t0, phone.open());
    let mut sent = Vec::new();
    let mut drive = |bridge: &mut Bridge, at: Instant| {
        bridge.handle_timeout(at);
        while let Some(t) = bridge.poll_transmit() {
            if t.to == phone.addr && !is_rtcp(t.data) {
                let (h, _) = parse_rtp(t.data).unwrap();
                sent.push((at, h));
            }
        }
    };
    for k in 0..5 {
        drive(&mut bridge, t0 + TICK * k);
    }
    // The next tick was due at t0 + 100 ms; the bridge is driven at t0 + 350 ms.
    drive(&mut bridge, t0 + Duration::from_millis(350));
    let next = bridge.poll_timeout();
    drive(&mut bridge, next);
    let (first_at, first) = sent[0];
    for (at, h) in &sent {
        let media_ms = u64::from(h.timestamp.wrapping_sub(first.timestamp)) / 8;
        let wall_ms = at.duration_since(first_at).as_millis() as u64;
        assert!(
            media_ms <= wall_ms && wall_ms - media_ms < 20,
            "timestamp at {media_ms} ms of media time, sent at {wall_ms} ms: {sent:?}"
        );
    }
    assert_eq!(sent.len(), 7, "one packet per tick run");
    for pair in sent.windows(2) {
        assert_eq!(pair[1].1.sequence, pair[0].1.sequence.wrapping_add(1));
    }
    assert!(
        sent[5].1.marker,
        "the packet after the gap starts a talkspurt"
    );
    assert!(!sent[6].1.marker);
    let clock = bridge.clock_stats();
    assert_eq!(
        (clock.ticks, clock.overruns, clock.skipped_ticks),
        (7, 1, 12)
    );
}

/// The longest wait between two audio packets `phone` received after `since`.
fn longest_gap(phone: &Phone, since: Instant) -> Duration {
    let arrivals: Vec<Instant> = phone
        .audio_at
        .iter()
        .map(|&(at, ..)| at)
        .filter(|&at| at >= since)
        .collect();
    arrivals
        .windows(2)
        .map(|w| w[1] - w[0])
        .max()
        .unwrap_or(Duration::MAX)
}

#[test]
fn an_overloaded_bridge_delays_no_other_and_a_leg_moves_between_bridges_unbroken() {
    let mut w = World::with_bridges(2, 11, Link::PERFECT, Duration::from_secs(30));
    // Room 1 on bridge 0, room 2 on bridge 1: a talker and a listener each.
    let talker1 = w.phone_on(0, 1, Some(440.0));
    let listener1 = w.phone_on(0, 2, None);
    let talker2 = w.phone_on(1, 3, Some(1000.0));
    let listener2 = w.phone_on(1, 4, None);
    for (b, p, room) in [
        (0, talker1, 1),
        (0, listener1, 1),
        (1, talker2, 2),
        (1, listener2, 2),
    ] {
        let leg = w.phones[p].leg;
        w.command_on(
            b,
            MediaCommand::Mix {
                leg,
                mix: MixId::Room(room),
            },
        );
    }
    w.run(Duration::from_secs(1));
    // Bridge 0's ticks now take 130 ms of its thread's time, for two seconds.
    let overload = w.now();
    w.tick_cost[0] = Duration::from_millis(130);
    w.run(Duration::from_secs(2));
    w.tick_cost[0] = Duration::ZERO;
    w.run(Duration::from_secs(1));

    // Bridge 1 kept its cadence throughout and was never late.
    assert_eq!(longest_gap(&w.phones[listener2], overload), TICK);
    assert_eq!(w.bridges[1].clock_stats().overruns, 0);
    assert!(amplitude(&w.phones[listener2].heard(50), 1000.0) > f64::from(AMP) * 0.5);
    // Bridge 0 fell behind, skipped what it missed, and said so.
    let late = w.bridges[0].clock_stats();
    assert!(late.overruns >= 10 && late.skipped_ticks >= 50, "{late:?}");
    assert!(longest_gap(&w.phones[listener1], overload) >= Duration::from_millis(120));
    // Its stream's timestamps kept with the clock: after the overload, media time and
    // arrival time agree within a tick, as they did before.
    let drift = |p: &Phone| {
        let (t0, _, ts0) = p.audio_at[0];
        let &(t, _, ts) = p.audio_at.last().unwrap();
        let media = Duration::from_millis(u64::from(ts.wrapping_sub(ts0)) / 8);
        (t - t0).abs_diff(media)
    };
    assert!(
        drift(&w.phones[listener1]) <= TICK,
        "{:?}",
        drift(&w.phones[listener1])
    );

    // Talker 1 is transferred into room 2: its leg moves to bridge 1 with its stream.
    let leg = w.phones[talker1].leg;
    let before = w.phones[talker1].audio_at.len();
    let moving = w.bridges[0].take_leg(leg).expect("the leg is on bridge 0");
    assert!(w.bridges[0].take_leg(leg).is_none());
    w.bridges[1].put_leg(leg, moving);
    w.command_on(
        1,
        MediaCommand::Mix {
            leg,
            mix: MixId::Room(2),
        },
    );
    w.run(Duration::from_secs(1));
    assert_eq!((w.bridges[0].leg_count(), w.bridges[1].leg_count()), (1, 3));
    let heard = w.phones[listener2].heard(25);
    assert!(
        amplitude(&heard, 440.0) > f64::from(AMP) * 0.5,
        "room 2 hears the newcomer"
    );
    assert!(amplitude(&heard, 1000.0) > f64::from(AMP) * 0.5);
    assert!(amplitude(&w.phones[talker1].heard(25), 1000.0) > f64::from(AMP) * 0.5);
    assert!(amplitude(&w.phones[listener1].heard(25), 440.0) < f64::from(AMP) * 0.02);
    // The moved leg's outgoing stream went on: consecutive sequence numbers, no pause.
    let moved = &w.phones[talker1].audio_at[before - 1..];
    for pair in moved.windows(2) {
        assert_eq!(pair[1].1, pair[0].1.wrapping_add(1), "{moved:?}");
        assert!(pair[1].0 - pair[0].0 <= TICK * 2, "{moved:?}");
    }
}

#[test]
fn a_moving_leg_can_cross_threads() {
    fn send<T: Send>() {}
    send::<MovingLeg>();
}
