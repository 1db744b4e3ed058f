//! Mixer cost per participant per 20 ms tick: `put_frame` for everyone, `tick`, and reading
//! everyone's `output`, as a mixing thread does. Not a test; run with
//! `cargo bench -p confero-media --bench mixer`.
//!
//! Silent participants send low noise (as real phones do, RMS ≈ 30); talkers send a tone of a
//! few thousand LSB with a 20 ms gap every 500 ms, like the pauses between words (without
//! them the voice detector would, after some seconds, learn a steady tone as noise). Each
//! scenario runs a warm-up, then ticks for about one second.

use std::hint::black_box;
use std::time::{Duration, Instant};

use confero_media::codec::CodecKind;
use confero_media::mixer::{Mixer, PartId};

/// The project's first target for server CPU per G.711 participant-frame in a large room.
const TARGET_US: f64 = 10.0;
const WARM_UP_TICKS: usize = 50;
const RUN_TIME: Duration = Duration::from_secs(1);
const MAX_TICKS: usize = 200_000;

/// Frames cycled through by each sender, prepared before the clock starts.
const VARIANTS: usize = 25;

struct Scenario {
    name: &'static str,
    /// Codec of each participant; the first `talkers` talk.
    codecs: Vec<CodecKind>,
    talkers: usize,
}

/// Deterministic pseudo-random noise (xorshift), RMS ≈ `rms`.
fn noise(seed: u64, samples: usize, rms: f64) -> Vec<i16> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..samples)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            // Uniform in [-1, 1) has RMS 1/√3.
            let u = (x >> 11) as f64 / (1u64 << 53) as f64 * 2.0 - 1.0;
            (u * rms * 3f64.sqrt()).round() as i16
        })
        .collect()
}

fn tone(freq: f64, amp: f64, codec: CodecKind, frame: usize) -> Vec<i16> {
    let rate = f64::from(codec.sample_rate());
    let n = codec.samples_per_frame();
    (0..n)
        .map(|k| {
            let t = (frame * n + k) as f64 / rate;
            (amp * (2.0 * std::f64::consts::PI * freq * t).sin()).round() as i16
        })
        .collect()
}

struct Report {
    per_participant_us: f64,
    mean_tick_us: f64,
    worst_tick_us: f64,
    ticks: usize,
    encodes: usize,
}

fn run(scenario: &Scenario) -> Report {
    let mut mixer = Mixer::new();
    let ids: Vec<PartId> = (0..scenario.codecs.len() as PartId).collect();
    for (&id, &codec) in ids.iter().zip(&scenario.codecs) {
        mixer.add(id, codec);
    }
    mixer.tick();

    // frames[p][v]: participant p's frame for tick v mod VARIANTS. Silent participants share
    // a few noise sequences (one per codec rate) to keep the working set realistic but small.
    let noise_narrow: Vec<Vec<i16>> = (0..VARIANTS).map(|v| noise(v as u64, 160, 30.0)).collect();
    let noise_wide: Vec<Vec<i16>> = (0..VARIANTS)
        .map(|v| noise(1000 + v as u64, 320, 30.0))
        .collect();
    let talk: Vec<Vec<Vec<i16>>> = scenario.codecs[..scenario.talkers]
        .iter()
        .enumerate()
        .map(|(t, &codec)| {
            // 20 ms × 25 = 500 ms: frequencies on a 2 Hz grid keep the loop seamless.
            let freq = 300.0 + 250.0 * t as f64;
            (0..VARIANTS)
                .map(|v| {
                    if v + 1 == VARIANTS {
                        noise(v as u64, codec.samples_per_frame(), 30.0)
                    } else {
                        tone(freq, 6_000.0, codec, v)
                    }
                })
                .collect()
        })
        .collect();
    let frame = |p: usize, v: usize| -> &[i16] {
        if p < scenario.talkers {
            &talk[p][v]
        } else if scenario.codecs[p].sample_rate() > 8000 {
            &noise_wide[(p + v) % VARIANTS]
        } else {
            &noise_narrow[(p + v) % VARIANTS]
        }
    };

    let one_tick = |tick: usize, mixer: &mut Mixer| -> usize {
        let v = tick % VARIANTS;
        for (p, &id) in ids.iter().enumerate() {
            mixer.put_frame(id, frame(p, v));
        }
        mixer.tick();
        let mut bytes = 0;
        for &id in &ids {
            bytes += mixer.output(id).map_or(0, <[u8]>::len);
        }
        black_box(bytes)
    };

    for tick in 0..WARM_UP_TICKS {
        one_tick(tick, &mut mixer);
    }
    assert_eq!(
        mixer.talkers().count(),
        scenario.talkers,
        "{}: the talkers are mixed, the noise is not",
        scenario.name
    );

    let start = Instant::now();
    let mut worst = Duration::ZERO;
    let mut ticks = 0;
    while ticks < MAX_TICKS && start.elapsed() < RUN_TIME {
        let t0 = Instant::now();
        one_tick(WARM_UP_TICKS + ticks, &mut mixer);
        worst = worst.max(t0.elapsed());
        ticks += 1;
    }
    let elapsed = start.elapsed();
    assert_eq!(
        mixer.talkers().count(),
        scenario.talkers,
        "{}: still mixing the talkers after the run",
        scenario.name
    );
    let mean_tick = elapsed.as_secs_f64() / ticks as f64;
    Report {
        per_participant_us: mean_tick * 1e6 / ids.len() as f64,
        mean_tick_us: mean_tick * 1e6,
        worst_tick_us: worst.as_secs_f64() * 1e6,
        ticks,
        encodes: mixer.encodes_last_tick(),
    }
}

fn main() {
    // `cargo bench` passes `--bench`; a filter argument selects scenarios by name.
    let filter: Option<String> = std::env::args().skip(1).find(|a| !a.starts_with('-'));
    let mixed_100: Vec<CodecKind> = (0..100)
        .map(|i| {
            if i % 2 == 0 {
                CodecKind::G722
            } else {
                CodecKind::Pcmu
            }
        })
        .collect();
    let scenarios = [
        Scenario {
            name: "pcmu_10_3talkers",
            codecs: vec![CodecKind::Pcmu; 10],
            talkers: 3,
        },
        Scenario {
            name: "pcmu_100_3talkers",
            codecs: vec![CodecKind::Pcmu; 100],
            talkers: 3,
        },
        Scenario {
            name: "pcmu_1000_3talkers",
            codecs: vec![CodecKind::Pcmu; 1000],
            talkers: 3,
        },
        Scenario {
            name: "g722_pcmu_100_3talkers",
            codecs: mixed_100,
            talkers: 3,
        },
    ];

    println!(
        "mixer: put_frame + tick + output per 20 ms tick; target {TARGET_US} µs per \
         participant-frame for the whole server"
    );
    println!(
        "{:<24} {:>6} {:>8} {:>12} {:>12} {:>10} {:>12} {:>9} {:>8}",
        "scenario",
        "parts",
        "ticks",
        "tick µs",
        "worst µs",
        "ns/part",
        "µs/part",
        "% target",
        "encodes"
    );
    for scenario in &scenarios {
        if filter
            .as_deref()
            .is_some_and(|f| !scenario.name.contains(f))
        {
            continue;
        }
        let r = run(scenario);
        println!(
            "{:<24} {:>6} {:>8} {:>12.2} {:>12.2} {:>10.1} {:>12.4} {:>8.2}% {:>8}",
            scenario.name,
            scenario.codecs.len(),
            r.ticks,
            r.mean_tick_us,
            r.worst_tick_us,
            r.per_participant_us * 1e3,
            r.per_participant_us,
            r.per_participant_us / TARGET_US * 100.0,
            r.encodes
        );
    }
}
