//! Flood benchmark: what a PBX on the internet takes while it is being flooded, through the
//! whole `confero` binary (release build).
//!
//! Run with `cargo bench -p confero-server --bench flood`. It registers `FLOOD_USERS`
//! users (their phones), then for `FLOOD_SECONDS` sends unauthenticated REGISTERs at
//! `FLOOD_RATE` a second from 64 addresses (127.0.1.x) while
//! - a monitor sends OPTIONS every 20 ms and times the answers,
//! - one registered phone refreshes its registration every 100 ms (it must keep working),
//! - the server's RSS is sampled every 100 ms;
//!
//! then it watches the RSS for `FLOOD_AFTER` seconds. Figures: flood sent and answered
//! (401, 503), OPTIONS latency p50/p99/max and losses, the phone's refreshes answered 200,
//! RSS before, peak during, and after.
//!
//! Knobs (environment, optional): `FLOOD_USERS` (10000), `FLOOD_RATE` (40000),
//! `FLOOD_SECONDS` (15), `FLOOD_AFTER` (60).

mod support;
use support::*;

use std::net::{SocketAddr, UdpSocket};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use confero_sip::digest::answer_challenge;

/// A REGISTER of `user` from `from`, with `auth` if given.
fn register_text(
    user: &str,
    from: SocketAddr,
    to: SocketAddr,
    cseq: u32,
    auth: Option<&str>,
) -> String {
    let auth = auth
        .map(|a| format!("Authorization: {a}\r\n"))
        .unwrap_or_default();
    format!(
        "REGISTER sip:{to} SIP/2.0\r\nVia: SIP/2.0/UDP {from};branch=z9hG4bK-fl-{user}-{cseq};rport\r\n\
         Max-Forwards: 70\r\nFrom: <sip:{user}@{ip}>;tag=fl\r\nTo: <sip:{user}@{ip}>\r\n\
         Call-ID: fl-{user}@{from}\r\nCSeq: {cseq} REGISTER\r\nContact: <sip:{user}@{from}>\r\n\
         Expires: 3600\r\n{auth}Content-Length: 0\r\n\r\n",
        ip = to.ip()
    )
}

fn code_of(msg: &[u8]) -> u16 {
    std::str::from_utf8(msg)
        .ok()
        .and_then(|m| m.strip_prefix("SIP/2.0 "))
        .and_then(|r| r.get(..3))
        .and_then(|c| c.parse().ok())
        .unwrap_or(0)
}

fn md5_challenge(msg: &[u8]) -> Option<String> {
    std::str::from_utf8(msg).ok()?.split("\r\n").find_map(|l| {
        let (n, v) = l.split_once(':')?;
        (n.eq_ignore_ascii_case("WWW-Authenticate") && v.contains("MD5"))
            .then(|| v.trim().to_owned())
    })
}

/// One exchange: sends `text`, returns the first final answer within `wait`.
fn exchange(sock: &UdpSocket, to: SocketAddr, text: &str, wait: Duration) -> Option<Vec<u8>> {
    sock.send_to(text.as_bytes(), to).ok()?;
    let deadline = Instant::now() + wait;
    let mut buf = [0u8; 4096];
    while Instant::now() < deadline {
        sock.set_read_timeout(Some(
            deadline
                .saturating_duration_since(Instant::now())
                .max(Duration::from_millis(1)),
        ))
        .ok()?;
        if let Ok((n, _)) = sock.recv_from(&mut buf) {
            if code_of(&buf[..n]) >= 200 {
                return Some(buf[..n].to_vec());
            }
        }
    }
    None
}

/// Registers user `i` from `sock` (challenge, then credentials); the final code.
fn register(sock: &UdpSocket, server: SocketAddr, i: usize, cseq: &mut u32) -> u16 {
    let from = sock.local_addr().expect("local");
    let user = username(i);
    *cseq += 1;
    let Some(challenge) = exchange(
        sock,
        server,
        &register_text(&user, from, server, *cseq, None),
        Duration::from_secs(2),
    ) else {
        return 0;
    };
    if code_of(&challenge) != 401 {
        return code_of(&challenge);
    }
    let ch = md5_challenge(&challenge).expect("MD5 challenge");
    let auth = answer_challenge(
        &ch,
        "REGISTER",
        &format!("sip:{server}"),
        &user,
        &password(i),
        1,
        "c0ffee",
    )
    .expect("answer");
    *cseq += 1;
    exchange(
        sock,
        server,
        &register_text(&user, from, server, *cseq, Some(&auth)),
        Duration::from_secs(2),
    )
    .map_or(0, |a| code_of(&a))
}

fn percentile(sorted: &[Duration], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let rank = ((p / 100.0) * (sorted.len() - 1) as f64).round() as usize;
    sorted[rank.min(sorted.len() - 1)].as_secs_f64() * 1000.0
}

fn main() {
    let users = env_or("FLOOD_USERS", 10_000usize).max(1);
    let rate = env_or("FLOOD_RATE", 40_000u64).max(1);
    let seconds = env_or("FLOOD_SECONDS", 15u64);
    let after = env_or("FLOOD_AFTER", 60u64);
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    println!("flood: {users} users, {rate}/s for {seconds} s, watched {after} s after");
    println!("machine: {cores} CPUs ({})", cpu_model());

    let server = Server::start(&[]);
    let pid = server.pid().to_string();
    provision(&server, users);
    std::thread::sleep(Duration::from_millis(300));
    let idle = status_kb(&pid, "VmRSS");
    // The phones: one socket per 100 users, registered one after another.
    let t = Instant::now();
    let phones: Vec<UdpSocket> = (0..users.div_ceil(100))
        .map(|_| UdpSocket::bind("127.0.0.1:0").expect("bind"))
        .collect();
    let mut failed = 0;
    for i in 0..users {
        let mut cseq = 0;
        if register(&phones[i / 100], server.sip, i, &mut cseq) != 200 {
            failed += 1;
        }
    }
    let registered = status_kb(&pid, "VmRSS");
    println!(
        "{users} phones registered in {:.1} s ({failed} failed); RSS idle {} MiB, with the registrations {} MiB",
        t.elapsed().as_secs_f64(),
        idle / 1024,
        registered / 1024
    );

    let stop = Arc::new(AtomicBool::new(false));
    let sent = Arc::new(AtomicU64::new(0));
    let answered = Arc::new([AtomicU64::new(0), AtomicU64::new(0), AtomicU64::new(0)]);
    // The flood: 64 addresses, two threads sending in 1 ms bursts.
    let server_sip = server.sip;
    let mut flooders = Vec::new();
    for thread in 0..2u8 {
        let (stop, sent, answered) = (stop.clone(), sent.clone(), answered.clone());
        flooders.push(std::thread::spawn(move || {
            let socks: Vec<UdpSocket> = (0..32u8)
                .map(|k| {
                    let s = UdpSocket::bind((
                        std::net::Ipv4Addr::new(127, 0, 1, 1 + thread * 32 + k),
                        0,
                    ))
                    .expect("bind a flood address");
                    s.set_nonblocking(true).expect("nonblocking");
                    s
                })
                .collect();
            let texts: Vec<String> = socks
                .iter()
                .enumerate()
                .map(|(k, s)| {
                    register_text(&username(k), s.local_addr().unwrap(), server_sip, 1, None)
                })
                .collect();
            let per_ms = (rate / 2 / 1000).max(1);
            let start = Instant::now();
            let mut buf = [0u8; 4096];
            let mut ms = 0u64;
            while !stop.load(Ordering::Relaxed) {
                for n in 0..per_ms {
                    let k = (n as usize + ms as usize) % socks.len();
                    if socks[k].send_to(texts[k].as_bytes(), server_sip).is_ok() {
                        sent.fetch_add(1, Ordering::Relaxed);
                    }
                }
                for s in &socks {
                    while let Ok((n, _)) = s.recv_from(&mut buf) {
                        let slot = match code_of(&buf[..n]) {
                            401 => 0,
                            503 => 1,
                            _ => 2,
                        };
                        answered[slot].fetch_add(1, Ordering::Relaxed);
                    }
                }
                ms += 1;
                let next = start + Duration::from_millis(ms);
                if let Some(wait) = next.checked_duration_since(Instant::now()) {
                    std::thread::sleep(wait);
                }
            }
        }));
    }
    // The monitor's OPTIONS every 20 ms.
    let monitor = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            let sock = UdpSocket::bind("127.0.0.1:0").expect("bind");
            let from = sock.local_addr().unwrap();
            let (mut rtts, mut lost) = (Vec::new(), 0u64);
            let mut n = 0u64;
            while !stop.load(Ordering::Relaxed) {
                n += 1;
                let text = format!(
                    "OPTIONS sip:{server_sip} SIP/2.0\r\nVia: SIP/2.0/UDP {from};branch=z9hG4bK-mon-{n};rport\r\n\
                     Max-Forwards: 70\r\nFrom: <sip:monitor@{from}>;tag=m\r\nTo: <sip:{server_sip}>\r\n\
                     Call-ID: mon-{n}\r\nCSeq: 1 OPTIONS\r\nContent-Length: 0\r\n\r\n"
                );
                let t = Instant::now();
                match exchange(&sock, server_sip, &text, Duration::from_secs(1)) {
                    Some(_) => rtts.push(t.elapsed()),
                    None => lost += 1,
                }
                std::thread::sleep(Duration::from_millis(20).saturating_sub(t.elapsed()));
            }
            (rtts, lost)
        })
    };
    // A registered phone refreshing every 100 ms.
    let phone = {
        let stop = stop.clone();
        let sock = phones[0].try_clone().expect("clone");
        std::thread::spawn(move || {
            let (mut ok, mut other) = (0u64, Vec::new());
            let mut cseq = 100;
            while !stop.load(Ordering::Relaxed) {
                let t = Instant::now();
                match register(&sock, server_sip, 0, &mut cseq) {
                    200 => ok += 1,
                    c => other.push(c),
                }
                std::thread::sleep(Duration::from_millis(100).saturating_sub(t.elapsed()));
            }
            (ok, other)
        })
    };
    let t0 = Instant::now();
    let mut peak = 0;
    while t0.elapsed() < Duration::from_secs(seconds) {
        peak = peak.max(status_kb(&pid, "VmRSS"));
        std::thread::sleep(Duration::from_millis(100));
    }
    stop.store(true, Ordering::Relaxed);
    for f in flooders {
        f.join().expect("flooder");
    }
    let (mut rtts, lost) = monitor.join().expect("monitor");
    let (refreshed, refresh_other) = phone.join().expect("phone");
    rtts.sort_unstable();
    let sent = sent.load(Ordering::Relaxed);
    let at_end = status_kb(&pid, "VmRSS");
    let t1 = Instant::now();
    let mut settled = at_end;
    while t1.elapsed() < Duration::from_secs(after) {
        std::thread::sleep(Duration::from_secs(1));
        settled = status_kb(&pid, "VmRSS");
    }
    println!();
    println!(
        "flood: {sent} REGISTERs in {seconds} s ({:.0}/s) from 64 addresses",
        sent as f64 / seconds as f64
    );
    println!(
        "  answered          {} 401, {} 503, {} other (the rest dropped on full socket buffers)",
        answered[0].load(Ordering::Relaxed),
        answered[1].load(Ordering::Relaxed),
        answered[2].load(Ordering::Relaxed)
    );
    println!(
        "  OPTIONS monitor   {} answered: p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms; {lost} unanswered within 1 s",
        rtts.len(),
        percentile(&rtts, 50.0),
        percentile(&rtts, 99.0),
        percentile(&rtts, 100.0)
    );
    println!(
        "  registered phone  {refreshed} refreshes answered 200, others: {:?}",
        &refresh_other[..refresh_other.len().min(10)]
    );
    println!(
        "  server RSS        before {} MiB, peak {} MiB, at the end {} MiB, {after} s later {} MiB",
        registered / 1024,
        peak / 1024,
        at_end / 1024,
        settled / 1024
    );
    let tail = server.stderr_tail();
    if !tail.is_empty() {
        println!("  server stderr (last lines):\n{tail}");
    }
}
