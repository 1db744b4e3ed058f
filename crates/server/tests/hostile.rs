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
    let file = scenario(
        dir,
        "caller.xml.in",
        "caller_rejected_by_room.part",
        &[("WAIT_MS", "0"), ("HOLD_MS", "0"), ("DTMF", "")],
    );
    let text = std::fs::read_to_string(&file)
        .unwrap()
        .replace("[media_port]", &media.port().to_string());
    std::fs::write(&file, text).unwrap();
    Sipp::spawn(
        "hostile-media-caller",
        &file,
        free_udp_port(),
        &[
            "-s",
            room,
            "-au",
            "bob",
            "-ap",
            "bob-secret",
            // SIPp's own media port, unused: the SDP names the test's socket.
            "-mp",
            &free_udp_port().to_string(),
            &pbx.sip.to_string(),
        ],
    )
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
