//! Load benchmark: REGISTER with digest authentication through the whole `confero` binary.
//!
//! Run with `cargo bench -p confero-server --bench register_load`. It starts the release
//! binary on free loopback ports with a fresh data dir, creates users through the REST API,
//! then drives the real flow from several UDP sockets: REGISTER → 401 (MD5 challenge) →
//! REGISTER with `Authorization` → 200, and then re-REGISTERs reusing the nonce (new
//! branch, CSeq and nc) with a bounded window of outstanding requests. The rate counts only
//! authenticated REGISTER → 200 exchanges; challenge round trips are reported apart.
//!
//! Knobs (environment variables, all optional):
//! `BENCH_USERS` (500), `BENCH_SOCKETS` (4), `BENCH_WINDOW` (100 outstanding requests in
//! all), `BENCH_MAX_REGISTERS` (100000), `BENCH_SECONDS` (20), `BENCH_TIMEOUT_MS` (2000).

mod support;
use support::*;

use std::collections::VecDeque;
use std::net::{SocketAddr, UdpSocket};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use confero_sip::digest::answer_challenge;

#[derive(Clone, Copy, Debug)]
struct Knobs {
    users: usize,
    sockets: usize,
    window: usize,
    max_registers: u64,
    seconds: u64,
    timeout: Duration,
}

impl Knobs {
    fn from_env() -> Knobs {
        let users = env_or("BENCH_USERS", 500usize).clamp(1, 89_999);
        let sockets = env_or("BENCH_SOCKETS", 4usize).clamp(1, users);
        Knobs {
            users,
            sockets,
            window: env_or("BENCH_WINDOW", 100usize).max(sockets),
            max_registers: env_or("BENCH_MAX_REGISTERS", 100_000u64),
            seconds: env_or("BENCH_SECONDS", 20u64),
            timeout: Duration::from_millis(env_or("BENCH_TIMEOUT_MS", 2000u64)),
        }
    }
}

// ==== the server process ====

/// `confero_sip_transactions` from /metrics, if the endpoint answers.
fn server_transactions(http_addr: SocketAddr) -> Option<u64> {
    let (status, body) = http(http_addr, "GET", "/metrics", "", "");
    if status != 200 {
        return None;
    }
    body.lines()
        .find_map(|l| l.strip_prefix("confero_sip_transactions "))
        .and_then(|v| v.trim().parse().ok())
}

// ==== /proc ====

// ==== the SIP clients ====

/// One user's registration state, owned by one client thread.
struct Ua {
    index: usize,
    username: String,
    password: String,
    call_id: String,
    cseq: u32,
    nc: u32,
    challenge: Option<String>,
    /// CSeq of the request in flight, when it was sent and whether it carried credentials.
    in_flight: Option<(u32, Instant, bool)>,
}

#[derive(Default)]
struct Tally {
    /// Authenticated REGISTER → 200 before the stop, and their latencies in µs.
    ok: u64,
    latencies_us: Vec<u32>,
    /// Unauthenticated REGISTER → 401 round trips.
    challenges: u64,
    /// Authenticated REGISTERs answered 401 again (e.g. the nonce went stale).
    rechallenged: u64,
    /// No answer within the timeout.
    timeouts: u64,
    /// Any other final answer.
    other: u64,
    other_codes: Vec<u16>,
    /// Datagrams we could not match to a request in flight (late or duplicate answers).
    unmatched: u64,
}

struct Shared {
    stop: AtomicBool,
    ok: AtomicU64,
}

/// The value of the first header named `name` (or its compact form), case-insensitive.
fn header<'a>(msg: &'a str, name: &str, compact: &str) -> Option<&'a str> {
    msg.split("\r\n").skip(1).find_map(|line| {
        let (n, v) = line.split_once(':')?;
        let n = n.trim();
        (n.eq_ignore_ascii_case(name) || (!compact.is_empty() && n.eq_ignore_ascii_case(compact)))
            .then(|| v.trim())
    })
}

/// The `WWW-Authenticate` value offering MD5.
fn md5_challenge(msg: &str) -> Option<String> {
    msg.split("\r\n")
        .skip(1)
        .take_while(|l| !l.is_empty())
        .filter_map(|line| {
            let (n, v) = line.split_once(':')?;
            n.trim()
                .eq_ignore_ascii_case("WWW-Authenticate")
                .then(|| v.trim())
        })
        .find(|v| {
            v.split(',').any(|p| {
                let p = p.trim().to_ascii_lowercase();
                p == "algorithm=md5" || p == "algorithm=\"md5\""
            })
        })
        .map(str::to_owned)
}

fn client(
    socket: UdpSocket,
    server: SocketAddr,
    mut uas: Vec<Ua>,
    sockets: usize,
    window: usize,
    timeout: Duration,
    shared: &Shared,
) -> Tally {
    let local = socket.local_addr().expect("local addr");
    socket
        .set_read_timeout(Some(Duration::from_millis(5)))
        .expect("read timeout");
    let request_uri = format!("sip:{}:{}", server.ip(), server.port());
    let mut tally = Tally::default();
    let mut idle: VecDeque<usize> = (0..uas.len()).collect();
    // (slot, cseq, sent) in send order: with one timeout for all, the front is the oldest.
    let mut sent_order: VecDeque<(usize, u32, Instant)> = VecDeque::new();
    let mut outstanding = 0usize;
    let mut buf = vec![0u8; 65_535];
    let mut req = String::with_capacity(1024);
    loop {
        let stopping = shared.stop.load(Ordering::Relaxed);
        if stopping {
            break;
        }
        // Fill the window.
        while outstanding < window {
            let Some(slot) = idle.pop_front() else { break };
            let ua = &mut uas[slot];
            ua.cseq += 1;
            let authorization = match &ua.challenge {
                Some(ch) => {
                    ua.nc += 1;
                    let cnonce = format!("{:08x}{:08x}", ua.index, ua.cseq);
                    match answer_challenge(
                        ch,
                        "REGISTER",
                        &request_uri,
                        &ua.username,
                        &ua.password,
                        ua.nc,
                        &cnonce,
                    ) {
                        Ok(a) => Some(a),
                        Err(e) => panic!("cannot answer the server's challenge {ch:?}: {e}"),
                    }
                }
                None => None,
            };
            req.clear();
            use std::fmt::Write as _;
            let _ = write!(
                req,
                "REGISTER {request_uri} SIP/2.0\r\n\
                 Via: SIP/2.0/UDP {local};branch=z9hG4bK-rb-{idx}-{cseq};rport\r\n\
                 Max-Forwards: 70\r\n\
                 From: <sip:{user}@{host}>;tag=rb{idx}\r\n\
                 To: <sip:{user}@{host}>\r\n\
                 Call-ID: {call_id}\r\n\
                 CSeq: {cseq} REGISTER\r\n\
                 Contact: <sip:{user}@{local}>\r\n\
                 Expires: 3600\r\n\
                 User-Agent: confero-register-bench\r\n",
                idx = ua.index,
                cseq = ua.cseq,
                user = ua.username,
                host = server.ip(),
                call_id = ua.call_id,
            );
            if let Some(a) = &authorization {
                let _ = write!(req, "Authorization: {a}\r\n");
            }
            req.push_str("Content-Length: 0\r\n\r\n");
            let now = Instant::now();
            if socket.send_to(req.as_bytes(), server).is_err() {
                tally.other += 1;
                idle.push_back(slot);
                continue;
            }
            ua.in_flight = Some((ua.cseq, now, authorization.is_some()));
            sent_order.push_back((slot, ua.cseq, now));
            outstanding += 1;
        }
        // Read answers until the socket is quiet for a moment.
        match socket.recv_from(&mut buf) {
            Ok((n, _)) => {
                let now = Instant::now();
                let Ok(msg) = std::str::from_utf8(&buf[..n]) else {
                    tally.unmatched += 1;
                    continue;
                };
                let code: u16 = msg
                    .strip_prefix("SIP/2.0 ")
                    .and_then(|r| r.get(..3))
                    .and_then(|c| c.parse().ok())
                    .unwrap_or(0);
                let slot = header(msg, "Call-ID", "i")
                    .and_then(|c| c.strip_prefix("rb-"))
                    .and_then(|c| c.split('@').next())
                    .and_then(|i| i.parse::<usize>().ok())
                    // Users are dealt round-robin, so user i is slot i / sockets here.
                    .and_then(|global| {
                        let slot = global / sockets;
                        uas.get(slot)
                            .is_some_and(|u| u.index == global)
                            .then_some(slot)
                    });
                let cseq: Option<u32> = header(msg, "CSeq", "")
                    .and_then(|c| c.split_whitespace().next())
                    .and_then(|c| c.parse().ok());
                let (Some(slot), Some(cseq)) = (slot, cseq) else {
                    tally.unmatched += 1;
                    continue;
                };
                let ua = &mut uas[slot];
                let Some((want, sent, authed)) = ua.in_flight else {
                    tally.unmatched += 1;
                    continue;
                };
                if want != cseq || code < 200 {
                    if code >= 200 {
                        tally.unmatched += 1;
                    }
                    continue;
                }
                ua.in_flight = None;
                outstanding -= 1;
                match code {
                    200 if authed => {
                        if !shared.stop.load(Ordering::Relaxed) {
                            tally.ok += 1;
                            shared.ok.fetch_add(1, Ordering::Relaxed);
                            let us = now.duration_since(sent).as_micros();
                            tally
                                .latencies_us
                                .push(u32::try_from(us).unwrap_or(u32::MAX));
                        }
                    }
                    401 => {
                        if authed {
                            tally.rechallenged += 1;
                        } else {
                            tally.challenges += 1;
                        }
                        match md5_challenge(msg) {
                            Some(ch) => ua.challenge = Some(ch),
                            None => panic!("401 without an MD5 challenge:\n{msg}"),
                        }
                    }
                    c => {
                        tally.other += 1;
                        if tally.other_codes.len() < 10 {
                            tally.other_codes.push(c);
                        }
                    }
                }
                idle.push_back(slot);
            }
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) => {}
            Err(_) => {
                // ICMP port unreachable and the like: the server is gone or refusing.
                tally.other += 1;
            }
        }
        // Expire requests that got no answer in time.
        let now = Instant::now();
        while let Some(&(slot, cseq, sent)) = sent_order.front() {
            let ua = &mut uas[slot];
            let live = matches!(ua.in_flight, Some((c, _, _)) if c == cseq);
            if !live {
                sent_order.pop_front();
                continue;
            }
            if now.duration_since(sent) < timeout {
                break;
            }
            sent_order.pop_front();
            ua.in_flight = None;
            outstanding -= 1;
            tally.timeouts += 1;
            idle.push_back(slot);
        }
    }
    tally
}

fn percentile(sorted: &[u32], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let rank = ((p / 100.0) * (sorted.len() - 1) as f64).round() as usize;
    f64::from(sorted[rank.min(sorted.len() - 1)]) / 1000.0
}

fn main() {
    let knobs = Knobs::from_env();
    let ticks_per_s = clock_ticks_per_second();
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    println!("register_load: {knobs:?}");
    println!(
        "machine: {cores} CPUs ({}), kernel clock {ticks_per_s} ticks/s",
        cpu_model()
    );

    let server = Server::start(&[]);
    let pid = server.pid().to_string();
    let t = Instant::now();
    provision(&server, knobs.users);
    println!(
        "server pid {pid}: sip={} http={}; {} users created and applied in {:.1} s; idle RSS {} KiB",
        server.sip,
        server.http,
        knobs.users,
        t.elapsed().as_secs_f64(),
        status_kb(&pid, "VmRSS")
    );
    // Give the engine task a moment to pick up the new production revision.
    std::thread::sleep(Duration::from_millis(300));

    // Users are dealt round-robin to the sockets.
    let mut per_socket: Vec<Vec<Ua>> = (0..knobs.sockets).map(|_| Vec::new()).collect();
    for i in 0..knobs.users {
        per_socket[i % knobs.sockets].push(Ua {
            index: i,
            username: username(i),
            password: password(i),
            call_id: format!("rb-{i}@127.0.0.1"),
            cseq: 0,
            nc: 0,
            challenge: None,
            in_flight: None,
        });
    }
    let shared = Arc::new(Shared {
        stop: AtomicBool::new(false),
        ok: AtomicU64::new(0),
    });
    let window_per_socket = (knobs.window / knobs.sockets).max(1);
    let self_ticks_before = cpu_ticks("self");
    let ticks_before = cpu_ticks(&pid);
    let drops_before = udp_rcvbuf_errors();
    let start = Instant::now();
    let mut threads = Vec::new();
    for uas in per_socket {
        let socket = UdpSocket::bind("127.0.0.1:0").expect("bind a client socket");
        let shared = shared.clone();
        let sip = server.sip;
        let timeout = knobs.timeout;
        let sockets = knobs.sockets;
        threads.push(std::thread::spawn(move || {
            client(
                socket,
                sip,
                uas,
                sockets,
                window_per_socket,
                timeout,
                &shared,
            )
        }));
    }

    // Watch the run: stop at the count or the time limit, whichever first.
    let limit = Duration::from_secs(knobs.seconds);
    let mut last_report = (start, 0u64);
    let (elapsed, ok_at_stop, server_ticks) = loop {
        std::thread::sleep(Duration::from_millis(20));
        let ok = shared.ok.load(Ordering::Relaxed);
        let now = Instant::now();
        if ok >= knobs.max_registers || now.duration_since(start) >= limit {
            let ticks = cpu_ticks(&pid) - ticks_before;
            shared.stop.store(true, Ordering::Relaxed);
            break (now.duration_since(start), ok, ticks);
        }
        if now.duration_since(last_report.0) >= Duration::from_secs(2) {
            let rate =
                (ok - last_report.1) as f64 / now.duration_since(last_report.0).as_secs_f64();
            // Nothing else is asked of the server meanwhile: a /metrics poll here was enough
            // of a stall to overflow its UDP receive buffer.
            println!(
                "  t={:5.1}s  {ok:7} registered  {rate:8.0}/s over the last 2 s",
                now.duration_since(start).as_secs_f64()
            );
            last_report = (now, ok);
        }
    };
    let client_ticks = cpu_ticks("self") - self_ticks_before;
    let drops = udp_rcvbuf_errors() - drops_before;

    let mut total = Tally::default();
    for t in threads {
        let t = t.join().expect("client thread");
        total.ok += t.ok;
        total.latencies_us.extend(t.latencies_us);
        total.challenges += t.challenges;
        total.rechallenged += t.rechallenged;
        total.timeouts += t.timeouts;
        total.other += t.other;
        total.other_codes.extend(t.other_codes);
        total.unmatched += t.unmatched;
    }
    total.latencies_us.sort_unstable();
    let rss = status_kb(&pid, "VmRSS");
    let hwm = status_kb(&pid, "VmHWM");
    let transactions = server_transactions(server.http);
    let tail = server.stderr_tail();
    server.stop();

    let secs = elapsed.as_secs_f64();
    let server_cpu_s = server_ticks as f64 / ticks_per_s as f64;
    let client_cpu_s = client_ticks as f64 / ticks_per_s as f64;
    let failures = total.timeouts + total.other;
    println!();
    println!(
        "REGISTER with digest auth: {} users, {} sockets, window {}, {:.2} s",
        knobs.users, knobs.sockets, knobs.window, secs
    );
    println!(
        "  registrations/s     {:.0}   ({ok_at_stop} authenticated REGISTER -> 200)",
        ok_at_stop as f64 / secs
    );
    println!(
        "  challenges          {} REGISTER -> 401 round trips, {} re-challenged",
        total.challenges, total.rechallenged
    );
    println!(
        "  failures            {failures}   ({} timeouts > {} ms, {} other answers {:?}), {} unmatched datagrams",
        total.timeouts,
        knobs.timeout.as_millis(),
        total.other,
        total.other_codes,
        total.unmatched
    );
    println!(
        "  UDP drops           {drops} datagrams dropped on full receive buffers (machine-wide)"
    );
    if drops > 0 {
        println!(
            "                      (the server's socket buffer holds about 100-130 REGISTERs at the \
             default SO_RCVBUF; a window above that measures overflow, not throughput)"
        );
    }
    println!(
        "  latency             p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
        percentile(&total.latencies_us, 50.0),
        percentile(&total.latencies_us, 99.0),
        percentile(&total.latencies_us, 100.0)
    );
    println!(
        "  server CPU          {server_cpu_s:.2} s = {:.0}% of one core, {:.1} us per REGISTER",
        100.0 * server_cpu_s / secs,
        1e6 * server_cpu_s / ok_at_stop.max(1) as f64
    );
    println!("  client CPU          {client_cpu_s:.2} s (this process, sharing the {cores} CPUs)");
    println!("  server RSS          {rss} KiB at the end, peak {hwm} KiB");
    match transactions {
        Some(n) => {
            println!("  server transactions {n} live at the end (kept 32 s after the answer)")
        }
        None => println!("  server did not answer /metrics at the end"),
    }
    if transactions.is_none() {
        println!("  server stderr (last lines):\n{tail}");
    }
}
