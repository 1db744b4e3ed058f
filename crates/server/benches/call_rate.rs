//! Call set-up benchmark: SIPp dials into conference rooms at a fixed rate while the rooms'
//! media runs, through the whole `confero` binary.
//!
//! Run with `cargo bench -p confero-server --bench call_rate` (needs `sipp`, Debian's
//! `sip-tester`). It starts the release binary on free loopback ports, creates the users
//! and rooms (extensions 7000, 7001, … without access code) through the REST API, then runs
//! SIPp with `support/call_into_room.xml`: each call is INVITE → 407 → ACK → INVITE with
//! credentials → 200 → ACK, held while the room sends it audio, then BYE. One user places
//! every call (SIPp answers challenges for one set of credentials), so the server runs with
//! `--max-calls-per-user` above the number of calls held at once; the rooms take turns.
//!
//! It reports what SIPp counted (calls made, succeeded, failed, retransmissions, set-up time
//! from the first INVITE to the 200 with its percentiles) and the server's CPU for the run.
//! Retransmissions are the figure to watch: SIPp resends an INVITE or BYE unanswered after
//! 500 ms, so any is a request the server took longer than that to answer.
//!
//! Knobs (environment variables, all optional): `CALL_RATE_RATE` (calls a second, 500),
//! `CALL_RATE_SECONDS` (how long calls are started, 10), `CALL_RATE_HOLD_MS` (2000),
//! `CALL_RATE_ROOMS` (20), `CALL_RATE_MEDIA_THREADS` (the
//! server's `--media-threads`; unset: one per core), `CALL_RATE_PERF` (a file path: `perf
//! record -g` the server for 5 s from the middle of the run, then print its top functions).

mod support;
use support::*;

use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

const SCENARIO: &str = include_str!("support/call_into_room.xml");

#[derive(Debug)]
struct Knobs {
    rate: u32,
    seconds: u32,
    hold_ms: u32,
    rooms: usize,
    media_threads: Option<usize>,
    perf: Option<String>,
}

impl Knobs {
    fn from_env() -> Knobs {
        let rate = env_or("CALL_RATE_RATE", 500u32).clamp(1, 10_000);
        Knobs {
            rate,
            seconds: env_or("CALL_RATE_SECONDS", 10u32).clamp(1, 600),
            hold_ms: env_or("CALL_RATE_HOLD_MS", 2_000u32).min(60_000),
            rooms: env_or("CALL_RATE_ROOMS", 20usize).clamp(1, 1_000),
            media_threads: env_opt("CALL_RATE_MEDIA_THREADS"),
            perf: env_opt("CALL_RATE_PERF"),
        }
    }
}

/// A UDP port nobody holds now (bound, read back, let go).
fn free_udp_port() -> u16 {
    std::net::UdpSocket::bind("127.0.0.1:0")
        .and_then(|s| s.local_addr())
        .map(|a| a.port())
        .expect("a free UDP port")
}

/// The columns of the last line of SIPp's statistics file, by name.
fn last_stats(csv: &str) -> Vec<(String, String)> {
    let mut lines = csv.lines().filter(|l| !l.trim().is_empty());
    let header: Vec<&str> = lines.next().unwrap_or_default().split(';').collect();
    let last: Vec<&str> = lines.next_back().unwrap_or_default().split(';').collect();
    header
        .iter()
        .zip(last)
        .map(|(h, v)| (h.trim().to_owned(), v.trim().to_owned()))
        .collect()
}

fn stat(stats: &[(String, String)], name: &str) -> u64 {
    stats
        .iter()
        .find(|(h, _)| h == name)
        .and_then(|(_, v)| v.parse().ok())
        .unwrap_or_else(|| panic!("no {name} in SIPp's statistics"))
}

/// Set-up times (ms) from SIPp's response-time file (`…_rtt.csv`: date;time;rtd).
fn setup_times(csv: &str) -> Vec<f64> {
    csv.lines()
        .skip(1)
        .filter_map(|l| l.split(';').nth(1)?.trim().parse().ok())
        .collect()
}

fn main() {
    if Command::new("sipp").arg("-v").output().is_err() {
        eprintln!("call_rate: sipp is not installed (apt-get install sip-tester)");
        std::process::exit(1);
    }
    let knobs = Knobs::from_env();
    let ticks_per_s = clock_ticks_per_second();
    println!("call_rate: {knobs:?}");
    println!(
        "machine: {} CPUs ({})",
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        cpu_model()
    );
    let threads = knobs.media_threads.map(|n| n.to_string());
    // Calls held at once, with room for slow hang-ups.
    let held = u64::from(knobs.rate) * (u64::from(knobs.hold_ms) / 1_000 + 5);
    let calls_per_user = held.to_string();
    let mut args = vec![
        "--rtp-ports",
        "20000-29999",
        "--max-calls-per-user",
        calls_per_user.as_str(),
    ];
    if let Some(n) = &threads {
        args.extend(["--media-threads", n.as_str()]);
    }
    let server = Server::start(&args);
    let pid = server.pid().to_string();
    provision_rooms(&server, 1, knobs.rooms);
    std::thread::sleep(Duration::from_millis(500));

    let dir = tempfile::tempdir().expect("tempdir");
    let scenario = dir.path().join("call_into_room.xml");
    let scenario_text = SCENARIO
        .replace("[hold]", &knobs.hold_ms.to_string())
        .replace("[user]", &username(0));
    std::fs::write(&scenario, scenario_text).expect("write the scenario");
    let mut rooms = String::from("SEQUENTIAL\n");
    for r in 0..knobs.rooms {
        rooms.push_str(&format!("{}\n", ROOM_BASE + r));
    }
    std::fs::write(dir.path().join("rooms.csv"), rooms).expect("write the rooms");

    let total = knobs.rate * knobs.seconds;
    let limit = held.to_string();
    let cpu_before = cpu_ticks(&pid);
    let children_before = reaped_children_ticks();
    let started = Instant::now();
    // SIPp's signalling socket is gone once it exits: its drops are read while it runs.
    let sipp_port = free_udp_port();
    let sipp_drops = Arc::new(AtomicU64::new(0));
    let running = Arc::new(AtomicBool::new(true));
    let sampler = {
        let (drops, running) = (sipp_drops.clone(), running.clone());
        std::thread::spawn(move || {
            while running.load(Ordering::Relaxed) {
                if let Some(n) = udp_socket_drops(sipp_port) {
                    drops.store(n, Ordering::Relaxed);
                }
                std::thread::sleep(Duration::from_millis(100));
            }
        })
    };
    // The profile covers calls being set up and held at the full rate, not the ramp.
    let profiler = knobs.perf.clone().map(|path| {
        let pid = pid.clone();
        let wait = Duration::from_secs(u64::from(knobs.seconds.saturating_sub(5) / 2 + 1));
        std::thread::spawn(move || {
            std::thread::sleep(wait);
            profile(&pid, &path);
        })
    });
    let sipp = Command::new("sipp")
        .current_dir(dir.path())
        .arg(server.sip.to_string())
        .args(["-sf", "call_into_room.xml", "-inf", "rooms.csv"])
        .args(["-au", &username(0), "-ap", &password(0)])
        .args(["-r", &knobs.rate.to_string(), "-rp", "1000"])
        .args(["-m", &total.to_string(), "-l", &limit])
        .args(["-i", "127.0.0.1", "-p", &sipp_port.to_string()])
        .args(["-mp", &free_udp_port().to_string()])
        .args(["-trace_stat", "-stf", "stats.csv", "-fd", "1"])
        .args(["-trace_rtt", "-rtt_freq", "1", "-trace_err"])
        .args([
            "-timeout",
            &format!("{}s", knobs.seconds + knobs.hold_ms / 1_000 + 60),
        ])
        .args(["-nostdin", "-max_recv_loops", "10000"])
        // SIPp's own socket buffers hold 64 KiB by default: at 2,000 calls a second a burst
        // of answers overflowed them, and SIPp retransmitted what it had dropped.
        .args(["-buff_size", "4194304"])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .output()
        .expect("run sipp");
    let elapsed = started.elapsed();
    running.store(false, Ordering::Relaxed);
    sampler.join().expect("the drop sampler");
    let cpu = (cpu_ticks(&pid) - cpu_before) as f64 / ticks_per_s as f64;
    if let Some(profiler) = profiler {
        profiler.join().expect("the profiler thread");
    }
    // SIPp (and perf, when profiling) have exited and been waited for by now.
    let client = (reaped_children_ticks() - children_before) as f64 / ticks_per_s as f64;

    let stats_text = std::fs::read_to_string(dir.path().join("stats.csv")).unwrap_or_default();
    let stats = last_stats(&stats_text);
    let rtt_file = std::fs::read_dir(dir.path())
        .expect("read the run's directory")
        .filter_map(Result::ok)
        .find(|e| e.file_name().to_string_lossy().ends_with("_rtt.csv"))
        .map(|e| std::fs::read_to_string(e.path()).unwrap_or_default())
        .unwrap_or_default();
    let mut times = setup_times(&rtt_file);
    times.sort_by(f64::total_cmp);
    let at = |q: f64| {
        times
            .get(((times.len() as f64 - 1.0) * q).round() as usize)
            .copied()
            .unwrap_or(f64::NAN)
    };
    println!();
    println!(
        "CALL RATE: {} calls a second for {} s into {} rooms, each held {} ms",
        knobs.rate, knobs.seconds, knobs.rooms, knobs.hold_ms
    );
    println!(
        "  calls            {} made, {} succeeded, {} failed; {} retransmissions (sipp exit {})",
        stat(&stats, "OutgoingCall(C)"),
        stat(&stats, "SuccessfulCall(C)"),
        stat(&stats, "FailedCall(C)"),
        stat(&stats, "Retransmissions(C)"),
        sipp.status.code().unwrap_or(-1)
    );
    println!(
        "  set-up           INVITE → 200 with the 407 round, {} timed: p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
        times.len(),
        at(0.5),
        at(0.99),
        at(1.0)
    );
    println!(
        "  server CPU       {cpu:.2} s over {:.1} s = {:.1}% of one core -> {:.0} us per call",
        elapsed.as_secs_f64(),
        100.0 * cpu / elapsed.as_secs_f64(),
        1e6 * cpu / f64::from(total.max(1))
    );
    println!(
        "  SIPp CPU         {client:.2} s = {:.1}% of one core",
        100.0 * client / elapsed.as_secs_f64()
    );
    // Requests the server refused at once with 503 because its input backed up (the
    // overload guard, docs/security.md): SIPp counts those calls as failed.
    let (_, metrics) = http(server.http, "GET", "/metrics", "", "");
    let refused = metrics
        .lines()
        .find_map(|l| l.strip_prefix("confero_sip_overload_refusals_total "))
        .unwrap_or("?");
    println!("  overload guard   {refused} requests refused with 503 while the input backed up");
    println!(
        "  UDP drops        {} at the server's SIP socket, {} at SIPp's (full receive buffers)",
        udp_socket_drops(server.sip.port()).map_or("?".into(), |n| n.to_string()),
        sipp_drops.load(Ordering::Relaxed)
    );
    if !sipp.status.success() {
        let err = String::from_utf8_lossy(&sipp.stderr);
        let first = err.lines().find(|l| l.contains("call")).unwrap_or_default();
        println!(
            "  sipp said        {}",
            first.chars().take(200).collect::<String>()
        );
    }
    server.stop();
}
