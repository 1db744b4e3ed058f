//! Conference rooms end to end with third-party peers: SIPp for signalling and DTMF
//! (RFC 4733 from SIPp's own pcaps, SIP INFO, in-band tones), baresip as phones that send
//! a sine tone and record what they hear, checked by content.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::time::{Duration, Instant};

use common::baresip::*;
use common::room_caller::*;
use common::rtp::linear_to_ulaw;
use common::*;

/// A PBX with Alice (101, a room administrator), Bob (102), Carol (103) and rooms:
/// 800 open, 801 with access code 2468, 802 waiting for Alice.
fn pbx_with_rooms() -> Pbx {
    let pbx = Pbx::start();
    pbx.create_user("Alice", "101", "alice", "alice-secret");
    pbx.create_user("Bob", "102", "bob", "bob-secret");
    pbx.create_user("Carol", "103", "carol", "carol-secret");
    for body in [
        r#"{"name":"Open room","extension":"800"}"#,
        r#"{"name":"Coded room","extension":"801","access_code":"2468"}"#,
        r#"{"name":"Board","extension":"802","admin_extension":"101","wait_for_admin":true}"#,
    ] {
        let (status, text) = pbx.api("POST", "/api/v1/conferences", Some(body));
        assert_eq!(status, 201, "{text}");
    }
    pbx.apply();
    pbx
}

fn pbx_with_rooms_and(args: &[&str]) -> Pbx {
    let pbx = Pbx::start_with_flags(args);
    pbx.create_user("Bob", "102", "bob", "bob-secret");
    let (status, text) = pbx.api(
        "POST",
        "/api/v1/conferences",
        Some(r#"{"name":"Coded room","extension":"801","access_code":"2468"}"#),
    );
    assert_eq!(status, 201, "{text}");
    pbx.apply();
    pbx
}

#[test]
fn access_code_by_sip_info_joins_the_room() {
    require!("sipp", "sip-tester");
    let pbx = pbx_with_rooms();
    let id = conference_id(&pbx, "801");
    let dir = tempfile::tempdir().unwrap();
    let caller = room_caller(
        &pbx,
        dir.path(),
        "room-info",
        Visit {
            room: "801",
            dtmf: Dtmf::Info("2468#"),
            wait_ms: 1000,
            hold_ms: 6000,
            rejected: false,
        },
    );
    let list = wait_for_room(&pbx, id, Duration::from_secs(10), |l| {
        l.iter().any(|p| p["state"] == "in_room")
    });
    assert!(
        list.iter()
            .any(|p| p["state"] == "in_room" && p["caller"] == "102"),
        "{list:?}"
    );
    caller.expect_success();
    assert!(
        wait_for_room(&pbx, id, Duration::from_secs(3), |l| l.is_empty()).is_empty(),
        "left after BYE"
    );
}

#[test]
fn access_code_by_rfc4733_events_joins_the_room() {
    require!("sipp", "sip-tester");
    let pbx = pbx_with_rooms();
    let id = conference_id(&pbx, "801");
    let dir = tempfile::tempdir().unwrap();
    let caller = room_caller(
        &pbx,
        dir.path(),
        "room-4733",
        Visit {
            room: "801",
            dtmf: Dtmf::Rfc4733("2468#"),
            wait_ms: 1000,
            hold_ms: 6000,
            rejected: false,
        },
    );
    let list = wait_for_room(&pbx, id, Duration::from_secs(12), |l| {
        l.iter().any(|p| p["state"] == "in_room")
    });
    assert!(list.iter().any(|p| p["state"] == "in_room"), "{list:?}");
    caller.expect_success();
}

#[test]
fn access_code_by_inband_tones_joins_the_room() {
    require!("sipp", "sip-tester");
    let pbx = pbx_with_rooms();
    let id = conference_id(&pbx, "801");
    let dir = tempfile::tempdir().unwrap();
    let pcap = dir.path().join("inband-2468.pcap");
    write_dtmf_pcap(&pcap, "2468#");
    let caller = room_caller(
        &pbx,
        dir.path(),
        "room-inband",
        Visit {
            room: "801",
            dtmf: Dtmf::Pcap(&pcap),
            wait_ms: 1000,
            hold_ms: 6000,
            rejected: false,
        },
    );
    let list = wait_for_room(&pbx, id, Duration::from_secs(14), |l| {
        l.iter().any(|p| p["state"] == "in_room")
    });
    assert!(list.iter().any(|p| p["state"] == "in_room"), "{list:?}");
    caller.expect_success();
}

#[test]
fn three_wrong_codes_end_in_hang_up() {
    require!("sipp", "sip-tester");
    let pbx = pbx_with_rooms();
    let dir = tempfile::tempdir().unwrap();
    room_caller(
        &pbx,
        dir.path(),
        "room-wrong",
        Visit {
            room: "801",
            dtmf: Dtmf::Info("1#1#1#"),
            wait_ms: 500,
            hold_ms: 0,
            rejected: true,
        },
    )
    .expect_success();
}

#[test]
fn a_flood_of_200_rfc4733_digits_without_pound_ends_in_goodbye_not_harm() {
    require!("sipp", "sip-tester");
    let mut pbx = pbx_with_rooms();
    let id = conference_id(&pbx, "801");
    let dir = tempfile::tempdir().unwrap();
    let pcap = dir.path().join("flood.pcap");
    // 200 events, 40 ms apart, no '#': every 21 digits count as a wrong attempt, so the
    // receptionist says goodbye after the third and hangs up.
    write_event_pcap(&pcap, &"1234567890".repeat(20));
    room_caller(
        &pbx,
        dir.path(),
        "room-flood",
        Visit {
            room: "801",
            dtmf: Dtmf::Pcap(&pcap),
            wait_ms: 500,
            hold_ms: 0,
            rejected: true,
        },
    )
    .expect_success();
    assert!(pbx.is_running());
    assert!(wait_for_room(&pbx, id, Duration::from_secs(3), |l| l.is_empty()).is_empty());
}

// ---- in-band DTMF as a pcap SIPp plays -------------------------------------------------

fn dtmf_freqs(d: char) -> (f64, f64) {
    let rows = [697.0, 770.0, 852.0, 941.0];
    let cols = [1209.0, 1336.0, 1477.0, 1633.0];
    let (r, c) = match d {
        '1' => (0, 0),
        '2' => (0, 1),
        '3' => (0, 2),
        'A' => (0, 3),
        '4' => (1, 0),
        '5' => (1, 1),
        '6' => (1, 2),
        'B' => (1, 3),
        '7' => (2, 0),
        '8' => (2, 1),
        '9' => (2, 2),
        'C' => (2, 3),
        '*' => (3, 0),
        '0' => (3, 1),
        '#' => (3, 2),
        _ => (3, 3),
    };
    (rows[r], cols[c])
}

/// Writes a pcap of RFC 4733 telephone-event packets (PT 101): per digit a start, one
/// update and three end packets, 20 ms apart, each digit with its own timestamp.
fn write_event_pcap(path: &Path, digits: &str) {
    let mut packets: Vec<Vec<u8>> = Vec::new();
    let mut seq: u16 = 500;
    for (i, d) in digits.chars().enumerate() {
        let event = match d {
            '*' => 10,
            '#' => 11,
            d => d.to_digit(10).unwrap() as u8,
        };
        let ts = 8000 + i as u32 * 320;
        for (k, (end, duration)) in [
            (false, 160u16),
            (false, 320),
            (true, 480),
            (true, 480),
            (true, 480),
        ]
        .into_iter()
        .enumerate()
        {
            let mut rtp = vec![0x80, if k == 0 { 0x80 | 101 } else { 101 }];
            rtp.extend_from_slice(&seq.to_be_bytes());
            seq = seq.wrapping_add(1);
            rtp.extend_from_slice(&ts.to_be_bytes());
            rtp.extend_from_slice(&0x0bad_cafeu32.to_be_bytes());
            rtp.extend_from_slice(&[event, if end { 0x8a } else { 0x0a }]);
            rtp.extend_from_slice(&duration.to_be_bytes());
            packets.push(rtp);
        }
    }
    write_pcap(path, &packets, 8_000);
}

/// Writes RTP payloads as a pcap (Ethernet/IPv4/UDP on loopback), `gap_us` apart; SIPp
/// replaces addresses and ports when it plays it.
fn write_pcap(path: &Path, packets: &[Vec<u8>], gap_us: u32) {
    let mut out = Vec::new();
    out.extend_from_slice(&0xa1b2c3d4u32.to_le_bytes());
    out.extend_from_slice(&2u16.to_le_bytes());
    out.extend_from_slice(&4u16.to_le_bytes());
    out.extend_from_slice(&0i32.to_le_bytes());
    out.extend_from_slice(&0u32.to_le_bytes());
    out.extend_from_slice(&65535u32.to_le_bytes());
    out.extend_from_slice(&1u32.to_le_bytes()); // Ethernet
    for (n, rtp) in packets.iter().enumerate() {
        let udp_len = 8 + rtp.len();
        let ip_len = 20 + udp_len;
        let mut pkt = vec![0u8; 12];
        pkt.extend_from_slice(&[0x08, 0x00]);
        pkt.extend_from_slice(&[
            0x45,
            0,
            (ip_len >> 8) as u8,
            ip_len as u8,
            0,
            0,
            0,
            0,
            64,
            17,
            0,
            0,
            127,
            0,
            0,
            1,
            127,
            0,
            0,
            1,
        ]);
        pkt.extend_from_slice(&[
            0x17,
            0x70,
            0x17,
            0x70,
            (udp_len >> 8) as u8,
            udp_len as u8,
            0,
            0,
        ]);
        pkt.extend_from_slice(rtp);
        let usec = n as u32 * gap_us;
        out.extend_from_slice(&(usec / 1_000_000).to_le_bytes());
        out.extend_from_slice(&(usec % 1_000_000).to_le_bytes());
        out.extend_from_slice(&(pkt.len() as u32).to_le_bytes());
        out.extend_from_slice(&(pkt.len() as u32).to_le_bytes());
        out.extend_from_slice(&pkt);
    }
    std::fs::write(path, out).unwrap();
}

/// Writes a pcap of PCMU RTP carrying `digits` as audio tones (120 ms on, 120 ms off).
fn write_dtmf_pcap(path: &Path, digits: &str) {
    let mut pcm: Vec<i16> = vec![0; 1600];
    for d in digits.chars() {
        let (f1, f2) = dtmf_freqs(d);
        for i in 0..960 {
            let t = i as f64 / 8000.0;
            let v = 6000.0
                * ((2.0 * std::f64::consts::PI * f1 * t).sin()
                    + (2.0 * std::f64::consts::PI * f2 * t).sin());
            pcm.push(v as i16);
        }
        pcm.extend(std::iter::repeat_n(0, 960));
    }
    let packets: Vec<Vec<u8>> = pcm
        .chunks(160)
        .enumerate()
        .map(|(n, frame)| {
            let mut rtp = vec![0x80, if n == 0 { 0x80 } else { 0x00 }];
            rtp.extend_from_slice(&(1000u16.wrapping_add(n as u16)).to_be_bytes());
            rtp.extend_from_slice(&((n as u32) * 160).to_be_bytes());
            rtp.extend_from_slice(&0x1234_5678u32.to_be_bytes());
            rtp.extend(frame.iter().map(|s| linear_to_ulaw(*s)));
            rtp
        })
        .collect();
    write_pcap(path, &packets, 20_000);
}

/// Sends what a hostile or broken peer might to an RTP port, from other addresses.
fn attack_rtp_port(port: u16) {
    let sock = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let to = ("127.0.0.1", port);
    let mut foreign = vec![0x80, 0x00, 0, 1, 0, 0, 0, 160, 0xde, 0xad, 0xbe, 0xef];
    // Loud PCMU from a stranger: a full-scale 4 kHz square wave.
    foreign.extend((0..160).map(|i| if i % 2 == 0 { 0x00 } else { 0x80 }));
    let cases: Vec<Vec<u8>> = vec![
        vec![],
        vec![0x80],
        vec![0x00; 12],                                 // version 0
        vec![0x8f, 0x00, 0, 1, 0, 0, 0, 0, 1, 2, 3, 4], // 15 CSRCs announced, none present
        vec![
            0x90, 0x00, 0, 1, 0, 0, 0, 0, 1, 2, 3, 4, 0xbe, 0xde, 0xff, 0xff,
        ], // extension past end
        vec![0xa0, 0x00, 0, 1, 0, 0, 0, 0, 1, 2, 3, 4, 0xff], // padding longer than the packet
        vec![0x81, 200, 0xff, 0xff, 1, 2, 3, 4],        // RTCP SR with a huge length
        vec![0xff; 1400],
    ];
    for _ in 0..120 {
        for c in &cases {
            let _ = sock.send_to(c, to);
        }
        let _ = sock.send_to(&foreign, to);
        foreign[3] = foreign[3].wrapping_add(1);
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn two_participants_hear_each_others_tone_and_not_their_own() {
    require!("baresip", "baresip");
    let pbx = pbx_with_rooms();
    let id = conference_id(&pbx, "800");
    let bob = Baresip::start("bob", "bob-secret", &pbx, 440);
    let carol = Baresip::start("carol", "carol-secret", &pbx, 1000);
    bob.dial(&pbx, "800");
    carol.dial(&pbx, "800");
    let list = wait_for_room(&pbx, id, Duration::from_secs(10), |l| {
        l.iter().filter(|p| p["state"] == "in_room").count() == 2
    });
    assert_eq!(
        list.iter().filter(|p| p["state"] == "in_room").count(),
        2,
        "{list:?}\n{}",
        bob.log()
    );
    // While the window we analyse is recorded, a stranger throws garbage, malformed
    // RTP/RTCP and a foreign stream at Bob's port: ignored, nobody's audio changes.
    let bob_port = list
        .iter()
        .find(|p| p["caller"] == "102")
        .and_then(|p| p["rtp_port"].as_u64())
        .unwrap() as u16;
    let attacker = std::thread::spawn(move || attack_rtp_port(bob_port));
    std::thread::sleep(Duration::from_millis(2500));
    attacker.join().unwrap();
    bob.hangup();
    carol.hangup();
    std::thread::sleep(Duration::from_millis(500));
    assert_each_hears_the_other([
        ("bob", &bob, 1000.0, 440.0),
        ("carol", &carol, 440.0, 1000.0),
    ]);
}

#[test]
fn waiting_participant_hears_music_then_the_administrator() {
    require!("baresip", "baresip");
    let pbx = pbx_with_rooms();
    let id = conference_id(&pbx, "802");
    let bob = Baresip::start("bob", "bob-secret", &pbx, 440);
    let alice = Baresip::start("alice", "alice-secret", &pbx, 1000);
    bob.dial(&pbx, "802");
    let list = wait_for_room(&pbx, id, Duration::from_secs(10), |l| {
        l.iter().any(|p| p["state"] == "waiting")
    });
    assert!(list.iter().any(|p| p["state"] == "waiting"), "{list:?}");
    let waiting_since = Instant::now();
    std::thread::sleep(Duration::from_secs(7));
    alice.dial(&pbx, "802");
    let list = wait_for_room(&pbx, id, Duration::from_secs(15), |l| {
        l.iter().filter(|p| p["state"] == "in_room").count() == 2
    });
    assert_eq!(
        list.iter().filter(|p| p["state"] == "in_room").count(),
        2,
        "{list:?}"
    );
    let admin_in = waiting_since.elapsed().as_secs_f64();
    std::thread::sleep(Duration::from_secs(3));
    bob.hangup();
    alice.hangup();
    std::thread::sleep(Duration::from_millis(500));
    let (rate, samples) = bob.heard();
    // While waiting (after the announcement, before the administrator): music, no admin.
    let music = window(&samples, rate, 5.0, 7.0);
    assert!(
        rms(music) > 300.0,
        "hold music is audible: rms {:.0}",
        rms(music)
    );
    assert!(
        tone_share(music, rate, 1000.0) < 0.2,
        "nobody is heard while waiting"
    );
    // Once both are in the mix (they were for 3 s before hanging up; the recording's
    // start is not the test's clock, so measure from its end): the administrator's tone.
    let secs = samples.len() as f64 / f64::from(rate);
    assert!(secs > admin_in, "the recording covers the whole call");
    let after = window(&samples, rate, secs - 2.0, secs - 0.3);
    assert!(
        tone_share(after, rate, 1000.0) > 0.5,
        "bob hears the administrator: {:.3}",
        tone_share(after, rate, 1000.0)
    );
}

/// A SIPp phone of Bob's in the open room 800 that waits for the room to hang up on it;
/// returns it with the room's id and the participant list once it is in the mix.
fn phone_in_open_room(pbx: &Pbx, dir: &Path, name: &str) -> (Sipp, i64, Vec<serde_json::Value>) {
    let id = conference_id(pbx, "800");
    let caller = room_caller(
        pbx,
        dir,
        name,
        Visit {
            room: "800",
            dtmf: Dtmf::None,
            wait_ms: 0,
            hold_ms: 0,
            rejected: true,
        },
    );
    let list = wait_for_room(pbx, id, Duration::from_secs(10), |l| {
        l.iter().any(|p| p["state"] == "in_room")
    });
    assert!(list.iter().any(|p| p["state"] == "in_room"), "{list:?}");
    (caller, id, list)
}

#[test]
fn kick_and_mute_from_the_api() {
    require!("sipp", "sip-tester");
    let pbx = pbx_with_rooms();
    let dir = tempfile::tempdir().unwrap();
    let (caller, id, list) = phone_in_open_room(&pbx, dir.path(), "room-kick");
    let pid = list[0]["id"].as_u64().unwrap();
    let (status, body) = pbx.api(
        "POST",
        &format!("/api/v1/conferences/{id}/participants/{pid}/mute"),
        Some("{}"),
    );
    assert_eq!(status, 204, "{body}");
    let list = wait_for_room(&pbx, id, Duration::from_secs(3), |l| {
        l.iter().any(|p| p["muted"] == true)
    });
    assert_eq!(list[0]["muted"], true);
    let (status, _) = pbx.api(
        "POST",
        &format!("/api/v1/conferences/{id}/participants/999/kick"),
        Some("{}"),
    );
    assert_eq!(status, 404);
    let (status, body) = pbx.api(
        "POST",
        &format!("/api/v1/conferences/{id}/participants/{pid}/kick"),
        Some("{}"),
    );
    assert_eq!(status, 204, "{body}");
    // The SIPp phone receives the BYE (its scenario expects the room to hang up).
    caller.expect_success();
    assert!(wait_for_room(&pbx, id, Duration::from_secs(3), |l| l.is_empty()).is_empty());
}

#[test]
fn a_participant_that_stops_sending_is_hung_up_and_its_port_freed() {
    require!("sipp", "sip-tester");
    let pbx = pbx_with_rooms_and(&["--rtp-timeout", "3"]);
    let dir = tempfile::tempdir().unwrap();
    // This SIPp phone never sends RTP: after 3 s the room hangs up on it.
    room_caller(
        &pbx,
        dir.path(),
        "room-silent",
        Visit {
            room: "801",
            dtmf: Dtmf::None,
            wait_ms: 0,
            hold_ms: 0,
            rejected: true,
        },
    )
    .expect_success();
    assert_eq!(
        wait_for_metric(
            &pbx,
            "confero_rtp_ports_in_use",
            0.0,
            Duration::from_secs(3)
        ),
        0.0
    );
}

#[test]
fn bye_in_the_middle_of_the_prompt_leaks_nothing() {
    require!("sipp", "sip-tester");
    let mut pbx = pbx_with_rooms();
    let id = conference_id(&pbx, "801");
    let threads_before = pbx.thread_count();
    let dir = tempfile::tempdir().unwrap();
    for n in 0..3 {
        room_caller(
            &pbx,
            dir.path(),
            &format!("room-early-bye-{n}"),
            Visit {
                room: "801",
                dtmf: Dtmf::None,
                wait_ms: 300,
                hold_ms: 0,
                rejected: false,
            },
        )
        .expect_success();
    }
    assert!(wait_for_room(&pbx, id, Duration::from_secs(3), |l| l.is_empty()).is_empty());
    assert_eq!(
        wait_for_metric(
            &pbx,
            "confero_rtp_ports_in_use",
            0.0,
            Duration::from_secs(3)
        ),
        0.0
    );
    assert!(pbx.is_running());
    assert!(
        pbx.thread_count() <= threads_before,
        "threads leaked: {} -> {}",
        threads_before,
        pbx.thread_count()
    );
}

#[test]
fn deleting_a_room_with_people_in_it_closes_it_for_them_after_apply() {
    require!("sipp", "sip-tester");
    let pbx = pbx_with_rooms();
    let dir = tempfile::tempdir().unwrap();
    let (caller, id, _) = phone_in_open_room(&pbx, dir.path(), "room-deleted");
    let (status, body) = pbx.api("DELETE", &format!("/api/v1/conferences/{id}"), None);
    assert_eq!(status, 204, "{body}");
    // Saved but not applied: nothing happens to the call yet.
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(participants(&pbx, id).len(), 1);
    pbx.apply();
    // After Apply: "this conference room has been closed", then BYE (the SIPp phone
    // expects it).
    caller.expect_success();
}

#[test]
fn events_stream_reports_participants_live() {
    require!("sipp", "sip-tester");
    let pbx = pbx_with_rooms();
    let mut stream = TcpStream::connect(pbx.http).unwrap();
    use base64::Engine as _;
    let auth = base64::engine::general_purpose::STANDARD.encode(format!("admin:{ADMIN_PASSWORD}"));
    stream
        .write_all(format!("GET /api/v1/events HTTP/1.1\r\nHost: x\r\nAuthorization: Basic {auth}\r\nAccept: text/event-stream\r\n\r\n").as_bytes())
        .unwrap();
    stream
        .set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let caller = room_caller(
        &pbx,
        dir.path(),
        "room-events",
        Visit {
            room: "800",
            dtmf: Dtmf::None,
            wait_ms: 0,
            hold_ms: 3000,
            rejected: false,
        },
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut seen = String::new();
    let mut buf = [0u8; 8192];
    while Instant::now() < deadline
        && !(seen.contains("event: participants") && seen.contains("\"in_room\""))
    {
        if let Ok(n) = stream.read(&mut buf) {
            seen.push_str(&String::from_utf8_lossy(&buf[..n]));
        }
    }
    assert!(seen.starts_with("HTTP/1.1 200"), "{seen}");
    assert!(seen.contains("text/event-stream"), "{seen}");
    assert!(
        seen.contains("event: participants") && seen.contains("\"in_room\""),
        "{seen}"
    );
    caller.expect_success();
}

/// Two rooms on a server with two media threads: each room on a thread of its own, and in
/// each, the two participants hear each other and not the other room.
#[test]
fn rooms_are_spread_over_the_media_threads_and_each_keeps_its_audio() {
    require!("baresip", "baresip");
    let pbx = Pbx::start_with_flags(&["--media-threads", "2"]);
    pbx.create_user("Alice", "101", "alice", "alice-secret");
    pbx.create_user("Bob", "102", "bob", "bob-secret");
    pbx.create_user("Carol", "103", "carol", "carol-secret");
    pbx.create_user("Dave", "104", "dave", "dave-secret");
    for body in [
        r#"{"name":"Sales","extension":"800"}"#,
        r#"{"name":"Support","extension":"803"}"#,
    ] {
        let (status, text) = pbx.api("POST", "/api/v1/conferences", Some(body));
        assert_eq!(status, 201, "{text}");
    }
    pbx.apply();
    let phones = [
        ("bob", 440, "800"),
        ("carol", 1000, "800"),
        ("alice", 1500, "803"),
        ("dave", 2000, "803"),
    ]
    .map(|(user, hz, room)| {
        let phone = Baresip::start(user, &format!("{user}-secret"), &pbx, hz);
        phone.dial(&pbx, room);
        phone
    });
    for room in ["800", "803"] {
        let id = conference_id(&pbx, room);
        let list = wait_for_room(&pbx, id, Duration::from_secs(10), |l| {
            l.iter().filter(|p| p["state"] == "in_room").count() == 2
        });
        assert_eq!(
            list.iter().filter(|p| p["state"] == "in_room").count(),
            2,
            "room {room}: {list:?}"
        );
    }
    let per_thread = |name: &str| -> Vec<f64> {
        metric_series(&pbx, name)
            .into_iter()
            .map(|(_, v)| v)
            .collect()
    };
    assert_eq!(per_thread("confero_media_thread_mixes"), [1.0, 1.0]);
    assert_eq!(per_thread("confero_media_thread_legs"), [2.0, 2.0]);
    std::thread::sleep(Duration::from_secs(3));
    for phone in &phones {
        phone.hangup();
    }
    std::thread::sleep(Duration::from_millis(500));
    let [bob, carol, alice, dave] = &phones;
    assert_each_hears_the_other([("bob", bob, 1000.0, 440.0), ("carol", carol, 440.0, 1000.0)]);
    assert_each_hears_the_other([
        ("alice", alice, 2000.0, 1500.0),
        ("dave", dave, 1500.0, 2000.0),
    ]);
    // Nobody hears the other room.
    for (who, phone, other_room) in [
        ("bob", bob, [1500.0, 2000.0]),
        ("alice", alice, [440.0, 1000.0]),
    ] {
        let (rate, samples) = phone.heard();
        let secs = samples.len() as f64 / f64::from(rate);
        let last = window(&samples, rate, secs - 2.5, secs - 0.8);
        for hz in other_room {
            let share = quantile(&block_shares(last, rate, hz), 0.9);
            assert!(
                share < 0.05,
                "{who} hears {hz} Hz of the other room: {share:.3}"
            );
        }
    }
}

#[test]
fn a_wideband_and_a_narrowband_phone_hear_each_other() {
    require!("baresip", "baresip");
    let pbx = pbx_with_rooms();
    let id = conference_id(&pbx, "800");
    let bob = Baresip::start_with_codec("bob", "bob-secret", &pbx, 440, "G722");
    let carol = Baresip::start("carol", "carol-secret", &pbx, 1000);
    bob.dial(&pbx, "800");
    carol.dial(&pbx, "800");
    let list = wait_for_room(&pbx, id, Duration::from_secs(10), |l| {
        l.iter().filter(|p| p["state"] == "in_room").count() == 2
    });
    let codecs: Vec<&str> = list.iter().filter_map(|p| p["codec"].as_str()).collect();
    assert!(
        codecs.contains(&"G722") && codecs.contains(&"PCMU"),
        "{list:?}"
    );
    std::thread::sleep(Duration::from_secs(3));
    bob.hangup();
    carol.hangup();
    std::thread::sleep(Duration::from_millis(500));
    assert_each_hears_the_other([
        ("bob", &bob, 1000.0, 440.0),
        ("carol", &carol, 440.0, 1000.0),
    ]);
}

#[test]
fn stopping_the_server_hangs_up_participants_with_bye() {
    require!("sipp", "sip-tester");
    let pbx = pbx_with_rooms();
    let dir = tempfile::tempdir().unwrap();
    let (phone, _, _) = phone_in_open_room(&pbx, dir.path(), "room-shutdown");
    // SIGTERM: the phone must get a BYE, not be left talking to nobody.
    pbx.stop();
    phone.expect_success();
}

/// The whole server stopped for 300 ms (an overloaded or suspended machine): each media
/// thread wakes far behind and skips the ticks it missed rather than slipping, while a
/// caller goes on hearing the room, and /metrics says so, thread by thread.
#[test]
fn a_paused_server_skips_the_media_ticks_it_missed_and_says_so() {
    require!("sipp", "sip-tester");
    let pbx = pbx_with_rooms_and(&["--media-threads", "2"]);
    let ticks = poll(
        Duration::from_secs(2),
        || metric_series(&pbx, "confero_media_ticks_total"),
        |t| t.len() == 2 && t.iter().all(|(_, n)| *n >= 1.0),
    );
    assert!(
        ticks.len() == 2 && ticks.iter().all(|(_, n)| *n >= 1.0),
        "both media threads tick: {ticks:?}"
    );
    assert_eq!(metric(&pbx, "confero_media_overruns_total"), 0.0);
    pbx.pause_for(Duration::from_millis(300));
    let overruns = wait_for_metric(
        &pbx,
        "confero_media_overruns_total",
        2.0,
        Duration::from_secs(2),
    );
    assert_eq!(overruns, 2.0, "one overrun per thread for one pause");
    for (thread, skipped) in metric_series(&pbx, "confero_media_skipped_ticks_total") {
        assert!(
            (10.0..=20.0).contains(&skipped),
            "300 ms behind: {skipped} ticks skipped on {thread}"
        );
    }
    assert_eq!(metric_series(&pbx, "confero_media_thread_legs").len(), 2);
    // The server goes on: a caller still gets through the receptionist into a room.
    let dir = tempfile::tempdir().unwrap();
    room_caller(
        &pbx,
        dir.path(),
        "room-after-pause",
        Visit {
            room: "801",
            dtmf: Dtmf::Rfc4733("2468#"),
            wait_ms: 1000,
            hold_ms: 1000,
            rejected: false,
        },
    )
    .expect_success();
}

/// Six free ports in a row starting at an even port, on loopback (checked by binding them).
fn free_port_run() -> u16 {
    for _ in 0..200 {
        let base = 40_000 + 2 * (rand::random::<u16>() % 10_000);
        let all_free = (base..base + 6)
            .map(|p| std::net::UdpSocket::bind(("127.0.0.1", p)))
            .collect::<Vec<_>>()
            .iter()
            .all(Result::is_ok);
        if all_free {
            return base;
        }
    }
    panic!("no six free ports in a row");
}

/// Another program holds two of the three RTP pairs of `--rtp-ports`: the caller is put on
/// the third and talks, instead of being hung up for a port the server cannot bind; the
/// pairs passed over show in /metrics.
#[test]
fn rtp_ports_another_program_holds_are_passed_over() {
    require!("sipp", "sip-tester");
    let base = free_port_run();
    let _held: Vec<std::net::UdpSocket> = [base, base + 2]
        .iter()
        .map(|&p| std::net::UdpSocket::bind(("127.0.0.1", p)).expect("hold the port"))
        .collect();
    let range = format!("{base}-{}", base + 5);
    let pbx = pbx_with_rooms_and(&["--rtp-ports", &range]);
    let id = conference_id(&pbx, "801");
    let dir = tempfile::tempdir().unwrap();
    // Two calls one after the other: ports are handed out round-robin, so without passing
    // over held pairs at least one of them would land on one.
    for n in 0..2 {
        let caller = room_caller(
            &pbx,
            dir.path(),
            &format!("room-held-ports-{n}"),
            Visit {
                room: "801",
                dtmf: Dtmf::Rfc4733("2468#"),
                wait_ms: 1000,
                hold_ms: 2000,
                rejected: false,
            },
        );
        let list = wait_for_room(&pbx, id, Duration::from_secs(5), |l| !l.is_empty());
        let port = list.first().and_then(|p| p["rtp_port"].as_u64());
        assert_eq!(port, Some(u64::from(base + 4)), "call {n}: {list:?}");
        caller.expect_success();
        wait_for_room(&pbx, id, Duration::from_secs(3), |l| l.is_empty());
    }
    let passed_over = metric(&pbx, "confero_rtp_ports_taken_elsewhere_total");
    assert!(passed_over >= 2.0, "{passed_over}");
}
