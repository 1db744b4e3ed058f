//! Attacks on a running PBX, as a stranger on the network would make them, each bounded in
//! count and time and aimed at loopback only. Legitimate users are real peers (SIPp,
//! baresip); what they hear is checked by content.

mod common;

use std::net::{SocketAddr, UdpSocket};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::baresip::*;
use common::room_caller::{room_callers, spawn_bob, visit_scenario, Dtmf, Visit};
use common::rtp::{pcmu_samples, ToneSender};
use common::*;

/// A PBX with Bob (102), Carol (103) and the open room 800.
fn pbx_with_open_room() -> Pbx {
    let pbx = Pbx::start();
    pbx.create_user("Bob", "102", "bob", "bob-secret");
    pbx.create_user("Carol", "103", "carol", "carol-secret");
    let (status, text) = pbx.api(
        "POST",
        "/api/v1/conferences",
        Some(r#"{"name":"Open room","extension":"800"}"#),
    );
    assert_eq!(status, 201, "{text}");
    pbx.apply();
    pbx
}

/// A SIPp phone of Bob's dialling `room` whose SDP names `media` as its RTP address (a
/// socket of the test's), so the test is the phone's media; it stays until the PBX hangs up.
fn caller_with_media_at(pbx: &Pbx, dir: &Path, room: &str, media: SocketAddr) -> Sipp {
    let visit = Visit {
        room,
        dtmf: Dtmf::None,
        wait_ms: 0,
        hold_ms: 0,
        rejected: true,
    };
    let file = visit_scenario(dir, "hostile-media-caller", visit);
    let text = std::fs::read_to_string(&file)
        .unwrap()
        .replace("[media_port]", &media.port().to_string());
    std::fs::write(&file, text).unwrap();
    spawn_bob(pbx, "hostile-media-caller", &file, room, 1)
}

/// The registrations as JSON text, once they mention `needle` (the live view is published
/// at most every 100 ms), or after 3 s.
fn registrations_with(pbx: &Pbx, needle: &str) -> String {
    let deadline = Instant::now() + Duration::from_secs(3);
    loop {
        let (_, list) = pbx.api("GET", "/api/v1/registrations", None);
        if list.contains(needle) || Instant::now() > deadline {
            return list;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// What one socket received: packets and their decoded PCMU.
#[derive(Default)]
struct Heard {
    packets: usize,
    samples: Vec<i16>,
}

/// Receives on `sock` until `stop`, decoding PCMU.
fn listen(sock: &UdpSocket, stop: &AtomicBool) -> Heard {
    sock.set_read_timeout(Some(Duration::from_millis(20)))
        .unwrap();
    let mut heard = Heard::default();
    let mut buf = [0u8; 2048];
    while !stop.load(Ordering::Relaxed) {
        if let Ok((n, _)) = sock.recv_from(&mut buf) {
            heard.packets += 1;
            if let Some(s) = pcmu_samples(&buf[..n]) {
                heard.samples.extend(s);
            }
        }
    }
    heard
}

/// Sends a tone from `sock` to `to` every 20 ms for `packets` packets, receiving what comes
/// back between sends.
fn talk(sock: &UdpSocket, to: SocketAddr, hz: f64, packets: usize) -> Heard {
    sock.set_read_timeout(Some(Duration::from_millis(2)))
        .unwrap();
    let mut tone = ToneSender::new(hz, rand_ssrc(sock));
    let mut heard = Heard::default();
    let mut buf = [0u8; 2048];
    let start = Instant::now();
    for n in 0..packets {
        sock.send_to(&tone.next_packet(), to).unwrap();
        let next = start + Duration::from_millis(20 * (n as u64 + 1));
        while Instant::now() < next {
            if let Ok((len, _)) = sock.recv_from(&mut buf) {
                heard.packets += 1;
                if let Some(s) = pcmu_samples(&buf[..len]) {
                    heard.samples.extend(s);
                }
            }
        }
    }
    heard
}

fn rand_ssrc(sock: &UdpSocket) -> u32 {
    0x5eed_0000 | u32::from(sock.local_addr().unwrap().port())
}

/// The issue's probe turned around: a participant is silent (before its first packet and
/// for seconds after) while strangers — one at another address, one at the participant's
/// own IP on another port — send RTP to its media port. They never receive the room, their
/// tone is never heard, the participant keeps hearing the room and is heard again when it
/// speaks.
#[test]
fn a_stranger_cannot_take_over_a_silent_participants_media() {
    require!("sipp", "sip-tester");
    require!("baresip", "baresip");
    let pbx = pbx_with_open_room();
    let id = conference_id(&pbx, "800");
    let dir = tempfile::tempdir().unwrap();
    let carol = Baresip::start("carol", "carol-secret", &pbx, 1000);
    carol.dial(&pbx, "800");
    assert!(
        !wait_for_room(&pbx, id, Duration::from_secs(10), |l| {
            l.iter().any(|p| p["state"] == "in_room")
        })
        .is_empty(),
        "{}",
        carol.log()
    );

    let phone = UdpSocket::bind("127.0.0.1:0").unwrap();
    let _bob = caller_with_media_at(&pbx, dir.path(), "800", phone.local_addr().unwrap());
    let list = wait_for_room(&pbx, id, Duration::from_secs(10), |l| {
        l.iter().filter(|p| p["state"] == "in_room").count() == 2
    });
    let port = list
        .iter()
        .find(|p| p["caller"] != "103")
        .and_then(|p| p["rtp_port"].as_u64())
        .unwrap_or_else(|| panic!("Bob's phone not in the room: {list:?}")) as u16;
    let target = SocketAddr::from(([127, 0, 0, 1], port));

    // Phase 1, 4 s: the phone says nothing (it has sent no packet yet) while the strangers
    // talk at its port for 3 s.
    let stop = Arc::new(AtomicBool::new(false));
    let phone_rx = phone.try_clone().unwrap();
    let stop_rx = stop.clone();
    let listener = std::thread::spawn(move || listen(&phone_rx, &stop_rx));
    std::thread::sleep(Duration::from_millis(500));
    let strangers: Vec<_> = ["127.0.0.2:0", "127.0.0.1:0"]
        .into_iter()
        .map(|from| {
            std::thread::spawn(move || {
                let sock = UdpSocket::bind(from).unwrap();
                talk(&sock, target, 2000.0, 150)
            })
        })
        .collect();
    let strangers: Vec<Heard> = strangers.into_iter().map(|t| t.join().unwrap()).collect();
    std::thread::sleep(Duration::from_millis(500));
    stop.store(true, Ordering::Relaxed);
    let silent = listener.join().unwrap();

    for (who, heard) in ["127.0.0.2", "127.0.0.1 on another port"]
        .iter()
        .zip(&strangers)
    {
        assert_eq!(heard.packets, 0, "the stranger at {who} received the room");
    }
    // 4 s of the room at 50 packets a second, with a margin for the scheduler.
    assert!(
        silent.packets >= 170,
        "the phone received {} packets",
        silent.packets
    );
    let share = tone_share(&silent.samples, 8000, 1000.0);
    assert!(
        share > 0.5,
        "the phone should hear Carol's 1 kHz: {share:.3}"
    );
    let leaked = tone_share(&silent.samples, 8000, 2000.0);
    assert!(
        leaked < 0.02,
        "the strangers' 2 kHz reached the mix: {leaked:.3}"
    );

    // Phase 2: the phone speaks (1.5 kHz) and is heard by Carol, and hears her.
    let speaking = talk(&phone, target, 1500.0, 150);
    assert!(speaking.packets >= 130, "{}", speaking.packets);
    carol.hangup();
    std::thread::sleep(Duration::from_millis(300));
    let (rate, samples) = carol.heard();
    let secs = samples.len() as f64 / f64::from(rate);
    let last = window(&samples, rate, secs - 2.0, secs - 0.2);
    let heard = tone_share(last, rate, 1500.0);
    assert!(
        heard > 0.5,
        "Carol should hear the phone's 1.5 kHz: {heard:.3}"
    );
    let leaked = tone_share(&samples, rate, 2000.0);
    assert!(
        leaked < 0.02,
        "Carol heard the strangers' 2 kHz: {leaked:.3}"
    );
}

/// The issue's probe turned around: twenty SIPp calls at once from one user, each keying
/// three wrong codes by RFC 4733 as a phone paces them. Across calls only the first few
/// codes are checked at once, later ones wait (then the caller is told to try again
/// later); a colleague on baresip keys the right code meanwhile and is in at once.
#[test]
fn access_codes_cannot_be_guessed_by_many_calls_at_once() {
    require!("sipp", "sip-tester");
    require!("baresip", "baresip");
    let pbx = pbx_with_open_room();
    let (status, text) = pbx.api(
        "POST",
        "/api/v1/conferences",
        Some(r#"{"name":"Board","extension":"801","access_code":"246813"}"#),
    );
    assert_eq!(status, 201, "{text}");
    pbx.apply();
    let id = conference_id(&pbx, "801");
    let dir = tempfile::tempdir().unwrap();
    let started = Instant::now();
    let _attack = room_callers(
        &pbx,
        dir.path(),
        "hostile-code-guessing",
        Visit {
            room: "801",
            dtmf: Dtmf::Rfc4733("111111#111112#111113#"),
            wait_ms: 500,
            hold_ms: 0,
            rejected: true,
        },
        20,
    );
    std::thread::sleep(Duration::from_secs(4));
    let carol = Baresip::start("carol", "carol-secret", &pbx, 1000);
    carol.dial(&pbx, "801");
    std::thread::sleep(Duration::from_secs(2));
    carol.send_digits("246813#");
    let list = wait_for_room(&pbx, id, Duration::from_secs(15), |l| {
        l.iter()
            .any(|p| p["caller"] == "103" && p["state"] == "in_room")
    });
    assert!(
        list.iter()
            .any(|p| p["caller"] == "103" && p["state"] == "in_room"),
        "Carol should be in: {list:?}\n{}",
        carol.log()
    );
    // Give the attack 40 s in all: before, 60 codes would have been checked in ~10 s.
    std::thread::sleep(Duration::from_secs(40).saturating_sub(started.elapsed()));
    let checked = metric(&pbx, "confero_access_code_failures_total");
    let refused = metric(&pbx, "confero_access_code_refused_total");
    eprintln!("in 40 s: {checked} wrong codes checked, {refused} calls told to try later");
    // 3 free, then waits of 5, 10 and 20 s: at most 6 in 40 s (7 with a boundary).
    assert!(checked <= 7.0, "{checked} codes checked");
    assert!(
        checked >= 3.0,
        "the attack should have been running: {checked}"
    );
    assert!(refused >= 1.0, "{refused}");
    let inside: Vec<_> = participants(&pbx, id)
        .into_iter()
        .filter(|p| p["state"] == "in_room")
        .collect();
    assert_eq!(inside.len(), 1, "only Carol: {inside:?}");
}

/// svcrack (SIPVicious) against Bob's SIP password with a 2,000-word list whose last
/// words hold the right one, from another address, for at most 60 s: only a handful of guesses
/// are checked (the rest are refused unchecked), the password is not found, and Bob's
/// own phone, registered before from its usual address, registers again meanwhile.
#[test]
fn svcrack_does_not_find_a_sip_password() {
    require!("sipp", "sip-tester");
    require!("sipvicious_svcrack", "python3 -m pip install sipvicious");
    let pbx = pbx_with_open_room();
    let phone_port = free_udp_port();
    register(&pbx, "bob", "bob-secret", phone_port, phone_port, "u1");
    let dir = tempfile::tempdir().unwrap();
    let words: Vec<String> = (0..2000)
        .map(|i| {
            if i == 1990 {
                "bob-secret".to_owned()
            } else {
                format!("guess{i:04}")
            }
        })
        .collect();
    let dictionary = dir.path().join("words.txt");
    std::fs::write(&dictionary, words.join("\n") + "\n").unwrap();
    let mut svcrack = std::process::Command::new("sipvicious_svcrack")
        .args(["-u", "bob", "-b", "127.0.0.9", "-d"])
        .arg(&dictionary)
        .arg(format!("udp://{}", pbx.sip))
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("run svcrack");
    // Bounded: the list ends, or a minute passes.
    let deadline = Instant::now() + Duration::from_secs(60);
    while Instant::now() < deadline && svcrack.try_wait().unwrap().is_none() {
        std::thread::sleep(Duration::from_millis(200));
    }
    let _ = svcrack.kill();
    // Bob's phone refreshes its registration with his address and name still under lock.
    register(&pbx, "bob", "bob-secret", phone_port, phone_port, "u1");
    let out = svcrack.wait_with_output().unwrap();
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    assert!(!text.contains("bob-secret"), "svcrack found it:\n{text}");
    let checked = metric(&pbx, "confero_sip_auth_failures_total");
    let refused = metric(&pbx, "confero_sip_auth_refused_total");
    eprintln!("{checked} guesses checked, {refused} refused unchecked");
    // 5 free, then waits doubling from 2 s: at most 10 in a minute.
    assert!(
        (1.0..=10.0).contains(&checked),
        "{checked} guesses checked\n{text}"
    );
    let list = registrations_with(&pbx, &format!("127.0.0.1:{phone_port}"));
    assert!(
        list.contains(&format!("127.0.0.1:{phone_port}")),
        "Bob's phone: {list}"
    );
}

/// One spoofed INVITE (its sender never ACKs) gets one challenge of about its own size,
/// not a retransmitted series: the PBX cannot be used to amplify traffic at a victim.
#[test]
fn a_spoofed_invite_gets_one_reply_of_its_size() {
    let pbx = pbx_with_open_room();
    let victim = UdpSocket::bind("127.0.0.1:0").unwrap();
    let port = victim.local_addr().unwrap().port();
    let sdp = "v=0\r\no=x 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\nm=audio 4000 RTP/AVP 0\r\n";
    let invite = format!(
        "INVITE sip:800@127.0.0.1 SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.1:{port};branch=z9hG4bKspoof;rport\r\n\
         From: <sip:x@127.0.0.1>;tag=s\r\nTo: <sip:800@127.0.0.1>\r\nCall-ID: spoof\r\nCSeq: 1 INVITE\r\n\
         Contact: <sip:x@127.0.0.1:{port}>\r\nMax-Forwards: 70\r\nContent-Type: application/sdp\r\n\
         Content-Length: {}\r\n\r\n{sdp}",
        sdp.len()
    );
    victim.send_to(invite.as_bytes(), pbx.sip).unwrap();
    victim
        .set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let (mut replies, mut bytes) = (0, 0);
    let mut buf = [0u8; 4096];
    let end = Instant::now() + Duration::from_secs(12);
    while Instant::now() < end {
        if let Ok((n, _)) = victim.recv_from(&mut buf) {
            replies += 1;
            bytes += n;
            assert!(
                buf.starts_with(b"SIP/2.0 407"),
                "{}",
                String::from_utf8_lossy(&buf[..n])
            );
        }
    }
    eprintln!(
        "{} bytes in, {replies} replies, {bytes} bytes out",
        invite.len()
    );
    assert_eq!(replies, 1, "no retransmission of the challenge");
    assert!(
        bytes <= 2 * invite.len(),
        "{bytes} bytes back for {}",
        invite.len()
    );
}

/// Sends OPTIONS every 50 ms from its own socket until `stop`; (answered, lost, slowest).
fn monitor_options(pbx: SocketAddr, stop: &AtomicBool) -> (usize, usize, Duration) {
    let sock = UdpSocket::bind("127.0.0.1:0").unwrap();
    sock.set_read_timeout(Some(Duration::from_millis(50)))
        .unwrap();
    let from = sock.local_addr().unwrap();
    let (mut answered, mut lost, mut slowest) = (0, 0, Duration::ZERO);
    let mut buf = [0u8; 4096];
    let mut n = 0;
    while !stop.load(Ordering::Relaxed) {
        n += 1;
        let text = format!(
            "OPTIONS sip:{pbx} SIP/2.0\r\nVia: SIP/2.0/UDP {from};branch=z9hG4bKmon{n};rport\r\n\
             From: <sip:monitor@{from}>;tag=m\r\nTo: <sip:{pbx}>\r\nCall-ID: mon-{n}\r\n\
             CSeq: 1 OPTIONS\r\nContent-Length: 0\r\n\r\n"
        );
        let sent = Instant::now();
        sock.send_to(text.as_bytes(), pbx).unwrap();
        let id = format!("Call-ID: mon-{n}\r\n");
        loop {
            match sock.recv_from(&mut buf) {
                Ok((len, _)) if String::from_utf8_lossy(&buf[..len]).contains(&id) => {
                    answered += 1;
                    slowest = slowest.max(sent.elapsed());
                    break;
                }
                _ if sent.elapsed() > Duration::from_secs(1) => {
                    lost += 1;
                    break;
                }
                _ => {}
            }
        }
        std::thread::sleep(Duration::from_millis(50).saturating_sub(sent.elapsed()));
    }
    (answered, lost, slowest)
}

/// Counts the answers waiting on `socks` as 401, 503 and other.
fn count_answers(socks: &[UdpSocket], answers: &mut [u64; 3]) {
    let mut buf = [0u8; 4096];
    for s in socks {
        while let Ok((n, _)) = s.recv_from(&mut buf) {
            answers[match buf.get(8..11.min(n)) {
                Some(b"401") => 0,
                Some(b"503") => 1,
                _ => 2,
            }] += 1;
        }
    }
}

/// A flood of unauthenticated REGISTERs from 16 addresses, 8,000 a second for 5 s (bounded),
/// at the debug build the tests run: every datagram is answered (401, or 503 with
/// Retry-After once the server cannot keep up), a monitor's OPTIONS keep being answered,
/// a registered phone refreshes its registration meanwhile, and the memory the flood took
/// is given back.
#[test]
fn a_register_flood_is_answered_and_leaves_phones_and_memory_alone() {
    require!("sipp", "sip-tester");
    let pbx = pbx_with_open_room();
    let phone_port = free_udp_port();
    register(&pbx, "bob", "bob-secret", phone_port, phone_port, "u1");
    std::thread::sleep(Duration::from_millis(500));
    let before = pbx.rss_kib();
    let stop = Arc::new(AtomicBool::new(false));
    let monitor = {
        let (stop, sip) = (stop.clone(), pbx.sip);
        std::thread::spawn(move || monitor_options(sip, &stop))
    };
    let flood = {
        let sip = pbx.sip;
        std::thread::spawn(move || {
            let socks: Vec<UdpSocket> = (1..=16u8)
                .map(|k| {
                    let s = UdpSocket::bind((std::net::Ipv4Addr::new(127, 0, 1, k), 0)).unwrap();
                    s.set_nonblocking(true).unwrap();
                    s
                })
                .collect();
            let (mut sent, mut answers) = (0u64, [0u64; 3]);
            let start = Instant::now();
            for ms in 0..5000u64 {
                for i in 0..8 {
                    let s = &socks[((ms * 8 + i) % 16) as usize];
                    let from = s.local_addr().unwrap();
                    let text = format!(
                        "REGISTER sip:{sip} SIP/2.0\r\nVia: SIP/2.0/UDP {from};branch=z9hG4bKf{ms}x{i};rport\r\n\
                         From: <sip:u{i}@{ip}>;tag=f\r\nTo: <sip:u{i}@{ip}>\r\nCall-ID: f{ms}x{i}\r\n\
                         CSeq: 1 REGISTER\r\nContact: <sip:u{i}@{from}>\r\nContent-Length: 0\r\n\r\n",
                        ip = sip.ip()
                    );
                    if s.send_to(text.as_bytes(), sip).is_ok() {
                        sent += 1;
                    }
                }
                count_answers(&socks, &mut answers);
                if let Some(wait) =
                    (start + Duration::from_millis(ms + 1)).checked_duration_since(Instant::now())
                {
                    std::thread::sleep(wait);
                }
            }
            // Late answers.
            let end = Instant::now() + Duration::from_millis(500);
            while Instant::now() < end {
                count_answers(&socks, &mut answers);
                std::thread::sleep(Duration::from_millis(10));
            }
            (sent, answers)
        })
    };
    std::thread::sleep(Duration::from_millis(2500));
    let mut peak = pbx.rss_kib();
    // Bob's phone refreshes in the middle of the flood (SIPp retransmits as phones do).
    register(&pbx, "bob", "bob-secret", phone_port, phone_port, "u1");
    let (sent, [challenged, refused, other]) = flood.join().unwrap();
    peak = peak.max(pbx.rss_kib());
    stop.store(true, Ordering::Relaxed);
    let (answered, lost, slowest) = monitor.join().unwrap();
    std::thread::sleep(Duration::from_secs(5));
    let after = pbx.rss_kib();
    eprintln!(
        "flood: {sent} sent, {challenged} 401, {refused} 503, {other} other; OPTIONS {answered} \
         answered, {lost} lost, slowest {slowest:?}; RSS {} -> peak {} -> {} MiB",
        before / 1024,
        peak / 1024,
        after / 1024
    );
    assert_eq!(other, 0);
    assert!(
        challenged + refused >= sent * 9 / 10,
        "{} of {sent} answered",
        challenged + refused
    );
    assert_eq!(lost, 0, "every OPTIONS answered within a second");
    assert!(answered >= 80, "{answered}");
    assert!(slowest < Duration::from_millis(500), "{slowest:?}");
    assert!(
        peak < before + 100 * 1024,
        "the flood took {} MiB",
        (peak - before) / 1024
    );
    assert!(
        after <= before + before / 5 + 2048,
        "{after} KiB after, {before} before"
    );
    let list = registrations_with(&pbx, &format!("127.0.0.1:{phone_port}"));
    assert!(
        list.contains(&format!("127.0.0.1:{phone_port}")),
        "Bob's phone: {list}"
    );
}

/// Opens a TCP connection from `ip` to `to`, or `None` if the connect fails.
fn tcp_from(ip: [u8; 4], to: SocketAddr) -> Option<std::net::TcpStream> {
    let sock = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).ok()?;
    sock.bind(&SocketAddr::from((ip, 0)).into()).ok()?;
    sock.connect(&to.into()).ok()?;
    Some(sock.into())
}

/// Whether the server has closed `s` (read gives end of stream or a reset) within `wait`.
fn closed_by_server(s: &std::net::TcpStream, wait: Duration) -> bool {
    use std::io::Read;
    s.set_read_timeout(Some(wait)).unwrap();
    let mut b = [0u8; 64];
    let mut reader = s;
    match reader.read(&mut b) {
        Ok(0) => true,
        Ok(_) => false,
        Err(e) => !matches!(
            e.kind(),
            std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
        ),
    }
}

/// Slowloris on the SIP and HTTP ports: 40 addresses each hold 64 silent TCP connections
/// (the most one address may), one more address tries 200. The extra ones are closed at
/// once, each idle connection costs the server well under 16 KiB, a phone's TCP OPTIONS,
/// the API and a browser's WebSocket still get through, and the silent connections are
/// closed after 10 s, their memory given back.
#[test]
fn idle_connections_are_capped_cheap_and_closed() {
    require!("sipp", "sip-tester");
    let _ = rlimit::increase_nofile_limit(8192);
    let pbx = pbx_with_open_room();
    std::thread::sleep(Duration::from_millis(300));
    let before = pbx.rss_kib();
    let mut idle = Vec::new();
    for a in 1..=40u8 {
        for _ in 0..64 {
            idle.push(tcp_from([127, 0, 3, a], pbx.sip).expect("connect"));
        }
    }
    let greedy: Vec<_> = (0..200)
        .filter_map(|_| tcp_from([127, 0, 4, 1], pbx.sip))
        .collect();
    std::thread::sleep(Duration::from_secs(1));
    let held = pbx.rss_kib();
    let kept = greedy
        .iter()
        .filter(|s| !closed_by_server(s, Duration::from_millis(20)))
        .count();
    assert_eq!(kept, 64, "one address holds at most 64 connections");
    let open = (idle.len() + kept) as u64;

    // Meanwhile the legitimate get through: a phone's OPTIONS over TCP, the API, a browser.
    Sipp::spawn(
        "hostile-tcp-options",
        &scenario_dir().join("options.xml"),
        free_tcp_port(),
        &["-t", "t1", &pbx.sip.to_string()],
    )
    .expect_success();
    assert_eq!(pbx.api("GET", "/api/v1/users", None).0, 200);
    let http_hogs: Vec<_> = (0..70)
        .filter_map(|_| tcp_from([127, 0, 4, 2], pbx.http))
        .collect();
    let ws = ws_connect(&pbx, Some("sip")).expect("a browser still connects");
    drop(ws);
    assert!(
        metric(&pbx, "confero_stream_connections_refused_total") >= 136.0,
        "the extra SIP and HTTP connections were refused"
    );
    drop(http_hogs);

    // Silent connections are closed after 10 s.
    std::thread::sleep(Duration::from_secs(10));
    let still_open = idle
        .iter()
        .filter(|s| !closed_by_server(s, Duration::from_millis(5)))
        .count();
    assert_eq!(still_open, 0, "silent connections closed");
    drop(idle);
    drop(greedy);
    // What the connections cost while held.
    let per_conn = held.saturating_sub(before) * 1024 / open;
    // Their memory comes back within a minute (the target for any flood). The allocator
    // gives freed pages back as its threads next run, so the server is kept lightly busy
    // (a metrics read every half second) while RSS is watched; on a quiet machine it is
    // back within a few seconds, on one busy with other tests it can take longer.
    let bound = before + before / 5 + 2048;
    let mut after = pbx.rss_kib();
    let deadline = Instant::now() + Duration::from_secs(60);
    while after > bound && Instant::now() < deadline {
        let _ = metric(&pbx, "confero_stream_connections");
        std::thread::sleep(Duration::from_millis(500));
        after = pbx.rss_kib();
    }
    eprintln!(
        "{open} idle connections: RSS {} MiB before, {} MiB with them, {} MiB after: {per_conn} bytes each",
        before / 1024,
        held / 1024,
        after / 1024
    );
    assert!(
        per_conn <= 16 * 1024,
        "{per_conn} bytes per idle connection"
    );
    assert!(after <= bound, "{after} KiB after, {before} before");
    // The one left is the request reading the metric.
    assert!(metric(&pbx, "confero_stream_connections") <= 1.0);
}

/// The issue's INVITE flood turned around: two baresip phones talk in a room while SIPp
/// floods it with authenticated INVITEs from another user, 500 a second for 6 s. The flood
/// is refused (one account holds at most 8 calls; then 403, or 503 when the server sheds
/// load), the phones' conversation goes on undisturbed (each hears the other's tone through
/// the flood), OPTIONS keep being answered, and no RTP port stays held.
#[test]
fn an_invite_flood_leaves_a_conversation_in_progress_alone() {
    require!("sipp", "sip-tester");
    require!("baresip", "baresip");
    let pbx = pbx_with_open_room();
    pbx.create_user("Alice", "101", "alice", "alice-secret");
    pbx.apply();
    let id = conference_id(&pbx, "800");
    // Carol's tone is clear of the room's join and leave tones (659 and 988 Hz): flood
    // calls the per-user limit lets in join and leave the room while the phones talk.
    let alice = Baresip::start("alice", "alice-secret", &pbx, 440);
    let carol = Baresip::start("carol", "carol-secret", &pbx, 1500);
    alice.dial(&pbx, "800");
    carol.dial(&pbx, "800");
    let list = wait_for_room(&pbx, id, Duration::from_secs(10), |l| {
        l.iter().filter(|p| p["state"] == "in_room").count() == 2
    });
    assert_eq!(
        list.iter().filter(|p| p["state"] == "in_room").count(),
        2,
        "{list:?}"
    );
    let dir = tempfile::tempdir().unwrap();
    let file = scenario(
        dir.path(),
        "caller.xml.in",
        "caller_gets_final.part",
        &[("FINAL", "403"), ("BACK", "4")],
    );
    let stop = Arc::new(AtomicBool::new(false));
    let monitor = {
        let (stop, sip) = (stop.clone(), pbx.sip);
        std::thread::spawn(move || monitor_options(sip, &stop))
    };
    let started = Instant::now();
    let flood = Sipp::spawn(
        "hostile-invite-flood",
        &file,
        free_udp_port(),
        &[
            "-s",
            "800",
            "-au",
            "bob",
            "-ap",
            "bob-secret",
            "-m",
            "3000",
            "-r",
            "500",
            "-l",
            "3000",
            "-mp",
            &free_udp_port().to_string(),
            &pbx.sip.to_string(),
        ],
    );
    std::thread::sleep(Duration::from_secs(6));
    // The phones hang up while the flood is still on: their last seconds were under it.
    alice.hangup();
    carol.hangup();
    drop(flood);
    stop.store(true, Ordering::Relaxed);
    let (answered, lost, slowest) = monitor.join().unwrap();
    eprintln!(
        "flood for {:?}: OPTIONS {answered} answered, {lost} lost, slowest {slowest:?}; \
         {} refused as overload, {} calls in memory",
        started.elapsed(),
        metric(&pbx, "confero_sip_overload_refusals_total"),
        metric(&pbx, "confero_calls_in_memory")
    );
    std::thread::sleep(Duration::from_millis(500));
    assert_each_hears_the_other([
        ("alice", &alice, 1500.0, 440.0),
        ("carol", &carol, 440.0, 1500.0),
    ]);
    assert_eq!(lost, 0, "OPTIONS answered through the flood");
    assert!(slowest < Duration::from_millis(500), "{slowest:?}");
    // Bob's 8 calls at most were in the room, and end with the flood's end (SIPp killed:
    // they time out of RTP); the phones' ports are free.
    let peak_bob = participants(&pbx, id).len();
    assert!(peak_bob <= 8, "{peak_bob} participants left");
}

/// `kill -9` at any instant of an Apply, again and again: after each restart the
/// configuration is the old revision with its draft intact or the new one with nothing
/// pending — never half of it — and the server serves it.
#[test]
fn kill_9_during_apply_leaves_the_old_or_the_new_revision() {
    let mut dir = tempfile::tempdir().unwrap();
    let mut expected_revision = 0u64;
    for round in 0..15u64 {
        let pbx = Pbx::start_in(dir);
        let (status, body) = pbx.api("GET", "/api/v1/changes", None);
        assert_eq!(status, 200, "{body}");
        let changes: serde_json::Value = serde_json::from_str(&body).unwrap();
        let revision = changes["revision"].as_u64().unwrap();
        let pending = changes["pending"].as_u64().unwrap();
        assert!(
            (revision == expected_revision && pending == 50)
                || (revision == expected_revision + 1 && pending == 0)
                || (round == 0 && revision == 0 && pending == 0),
            "round {round}: revision {revision} with {pending} pending, expected {expected_revision}"
        );
        assert_eq!(metric(&pbx, "confero_config_revision"), revision as f64);
        eprintln!("round {round}: revision {revision}, {pending} pending");
        expected_revision = revision;
        if pending == 0 {
            // A fresh batch of changes for this round's Apply.
            for k in 0..50 {
                let body = format!(
                    r#"{{"name":"Room {round}-{k}","extension":"{}"}}"#,
                    10_000 + round * 50 + k
                );
                assert_eq!(pbx.api("POST", "/api/v1/conferences", Some(&body)).0, 201);
            }
        }
        let (http, bearer) = (pbx.http, pbx.bearer());
        let applying = std::thread::spawn(move || {
            let _ = std::panic::catch_unwind(|| {
                request(
                    http,
                    "POST",
                    "/api/v1/changes/apply",
                    Some("{}"),
                    Some(&bearer),
                )
            });
        });
        // Kill instants spread over the Apply (a few milliseconds in the debug build).
        std::thread::sleep(Duration::from_micros((round * 613) % 6_000));
        dir = pbx.kill_9();
        let _ = applying.join();
    }
}

fn register_request(
    from: SocketAddr,
    to: SocketAddr,
    branch: &str,
    cseq: u32,
    auth: &str,
) -> String {
    format!(
        "REGISTER sip:{to} SIP/2.0\r\nVia: SIP/2.0/UDP {from};branch={branch};rport\r\n\
         From: <sip:bob@{ip}>;tag=r\r\nTo: <sip:bob@{ip}>\r\nCall-ID: replay-{port}\r\n\
         CSeq: {cseq} REGISTER\r\nContact: <sip:bob@{from}>\r\nExpires: 600\r\n{auth}\
         Content-Length: 0\r\n\r\n",
        ip = to.ip(),
        port = from.port()
    )
}

/// A REGISTER captured on the wire and replayed — from the attacker's own address with the
/// attacker's contact, and as it was from the phone's — binds nothing: the nonce belongs to
/// the phone's address and its count was spent. Only the phone's contact stays registered.
#[test]
fn a_captured_register_replayed_binds_nothing() {
    let pbx = pbx_with_open_room();
    let phone = UdpSocket::bind("127.0.0.1:0").unwrap();
    let from = phone.local_addr().unwrap();
    // As a phone does: answer the challenge, and start again if refused (the engine may
    // not have the new user yet right after the Apply).
    let uri = format!("sip:{}", pbx.sip);
    let mut captured = String::new();
    for attempt in 0..10u32 {
        let branch = format!("z9hG4bKc{attempt}");
        let first = register_request(from, pbx.sip, &branch, 2 * attempt + 1, "");
        let challenge = udp_exchange(&phone, pbx.sip, first.as_bytes(), Duration::from_secs(3))
            .expect("an answer");
        assert!(challenge.starts_with("SIP/2.0 401"), "{challenge}");
        let md5 = challenge
            .lines()
            .find_map(|l| l.strip_prefix("WWW-Authenticate: "))
            .expect("a challenge");
        let auth = confero_sip::digest::answer_challenge(
            md5,
            "REGISTER",
            &uri,
            "bob",
            "bob-secret",
            1,
            "c",
        )
        .unwrap();
        let header = format!("Authorization: {auth}\r\n");
        captured = register_request(from, pbx.sip, "z9hG4bKc2x", 2 * attempt + 2, &header);
        if udp_exchange(&phone, pbx.sip, captured.as_bytes(), Duration::from_secs(3))
            .expect("an answer")
            .starts_with("SIP/2.0 200")
        {
            break;
        }
        captured.clear();
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(!captured.is_empty(), "the phone could not register");

    // The attacker, at another address, with their own contact and a new branch.
    let attacker = UdpSocket::bind("127.0.0.66:0").unwrap();
    let theirs = attacker.local_addr().unwrap();
    let stolen = captured.replace("z9hG4bKc2", "z9hG4bKx1").replace(
        &format!("Contact: <sip:bob@{from}>"),
        &format!("Contact: <sip:bob@{theirs}>"),
    );
    let answer = udp_exchange(
        &attacker,
        pbx.sip,
        stolen.as_bytes(),
        Duration::from_secs(3),
    )
    .expect("an answer");
    assert!(answer.starts_with("SIP/2.0 401"), "{answer}");
    // As it was, from the phone's address (a new transaction): the count is spent.
    let again = captured.replace("z9hG4bKc2x", "z9hG4bKx2");
    let answer =
        udp_exchange(&phone, pbx.sip, again.as_bytes(), Duration::from_secs(3)).expect("an answer");
    assert!(
        answer.starts_with("SIP/2.0 401") && answer.contains("stale=true"),
        "{answer}"
    );
    let list = registrations_with(&pbx, &from.to_string());
    assert!(list.contains(&from.to_string()), "{list}");
    assert!(
        !list.contains("127.0.0.66"),
        "the attacker's contact was bound: {list}"
    );
    assert_eq!(
        wait_for_metric(
            &pbx,
            "confero_sip_auth_replays_total",
            1.0,
            Duration::from_secs(2)
        ),
        1.0
    );
}
