//! End-to-end SIP tests: the real binary against SIPp, a third-party SIP implementation.

mod common;

use std::net::UdpSocket;
use std::time::Duration;

use common::*;

/// Skips (loudly) when SIPp is missing; the README's test command installs it.
macro_rules! require_sipp {
    () => {
        if !sipp_available() {
            if std::env::var_os("CI").is_some() {
                panic!("sipp is not installed but CI must run the SIP peer tests");
            }
            eprintln!("SKIPPED: sipp not installed (apt-get install sip-tester)");
            return;
        }
    };
}

fn pbx_with_users() -> Pbx {
    let pbx = Pbx::start();
    pbx.create_user("Alice", "101", "alice", "alice-secret");
    pbx.create_user("Bob", "102", "bob", "bob-secret");
    pbx.create_user("Carol", "103", "carol", "carol-secret");
    pbx.apply();
    pbx
}

fn registrations(pbx: &Pbx) -> serde_json::Value {
    let (status, body) = pbx.api("GET", "/api/v1/registrations", None);
    assert_eq!(status, 200, "{body}");
    serde_json::from_str(&body).unwrap()
}

/// The live view is refreshed at most every 100 ms: wait (bounded) until `pred` holds.
fn registrations_until(pbx: &Pbx, pred: impl Fn(&str) -> bool) -> String {
    let deadline = std::time::Instant::now() + Duration::from_secs(3);
    loop {
        let text = registrations(pbx).to_string();
        if pred(&text) || std::time::Instant::now() > deadline {
            return text;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn registration_count(pbx: &Pbx) -> usize {
    let v = registrations(pbx);
    v.as_array()
        .or_else(|| v.get("registrations").and_then(|r| r.as_array()))
        .map_or(0, |a| a.len())
}

#[test]
fn register_with_digest_auth_echoes_contact_with_expires() {
    require_sipp!();
    let pbx = pbx_with_users();
    let port = free_udp_port();
    register(&pbx, "alice", "alice-secret", port, port, "u1");
    let regs = registrations_until(&pbx, |r| r.contains("alice"));
    assert!(
        regs.contains("alice") && regs.contains(&port.to_string()),
        "{regs}"
    );
}

#[test]
fn register_over_tcp() {
    require_sipp!();
    let pbx = pbx_with_users();
    let port = free_tcp_port();
    register(&pbx, "bob", "bob-secret", port, port, "t1");
    assert!(registrations_until(&pbx, |r| r.contains("TCP")).contains("TCP"));
}

#[test]
fn wrong_password_and_unknown_user_get_the_same_401() {
    require_sipp!();
    let pbx = pbx_with_users();
    let target = pbx.sip.to_string();
    for (user, password) in [("alice", "not-her-password"), ("mallory", "whatever")] {
        Sipp::spawn(
            &format!("wrong-{user}"),
            &scenario_dir().join("register_wrong_password.xml"),
            free_udp_port(),
            &["-s", user, "-au", user, "-ap", password, &target],
        )
        .expect_success();
    }
    assert_eq!(registration_count(&pbx), 0);
}

#[test]
fn options_ping_over_udp_and_tcp() {
    require_sipp!();
    let pbx = Pbx::start();
    let target = pbx.sip.to_string();
    Sipp::spawn(
        "options-udp",
        &scenario_dir().join("options.xml"),
        free_udp_port(),
        &[&target],
    )
    .expect_success();
    Sipp::spawn(
        "options-tcp",
        &scenario_dir().join("options.xml"),
        free_tcp_port(),
        &["-t", "t1", &target],
    )
    .expect_success();
}

fn register_request(port: u16, branch: &str) -> String {
    format!(
        "REGISTER sip:127.0.0.1 SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.1:{port};branch={branch};rport\r\nFrom: <sip:alice@127.0.0.1>;tag=abc\r\nTo: <sip:alice@127.0.0.1>\r\nCall-ID: retrans-{branch}\r\nCSeq: 1 REGISTER\r\nContact: <sip:alice@127.0.0.1:{port}>\r\nMax-Forwards: 70\r\nContent-Length: 0\r\n\r\n"
    )
}

#[test]
fn answers_to_strangers_keep_no_state() {
    let pbx = pbx_with_users();
    let sock = UdpSocket::bind("127.0.0.1:0").unwrap();
    let port = sock.local_addr().unwrap().port();
    // OPTIONS (keep-alives, monitors, floods) is answered without state too: each copy
    // gets an answer of its own.
    let options = register_request(port, "z9hG4bKretrans0")
        .replace("REGISTER sip:", "OPTIONS sip:")
        .replace("CSeq: 1 REGISTER", "CSeq: 1 OPTIONS");
    let first = udp_exchange(&sock, pbx.sip, options.as_bytes(), Duration::from_secs(5)).unwrap();
    let second = udp_exchange(&sock, pbx.sip, options.as_bytes(), Duration::from_secs(5)).unwrap();
    assert!(first.starts_with("SIP/2.0 200"), "{first}");
    assert!(second.starts_with("SIP/2.0 200"), "{second}");
    assert_eq!(
        metric(&pbx, "confero_sip_transactions"),
        0.0,
        "nothing kept"
    );
    // A challenge is sent once and forgotten: the retransmitted REGISTER gets a fresh one
    // (one datagram each, nothing kept for a stranger).
    let req = register_request(port, "z9hG4bKretrans1");
    let first = udp_exchange(&sock, pbx.sip, req.as_bytes(), Duration::from_secs(5)).expect("401");
    let second =
        udp_exchange(&sock, pbx.sip, req.as_bytes(), Duration::from_secs(5)).expect("401 again");
    assert!(first.starts_with("SIP/2.0 401"), "{first}");
    assert!(second.starts_with("SIP/2.0 401"), "{second}");
    assert_ne!(first, second, "a new nonce each time");
    assert_eq!(
        udp_exchange(&sock, pbx.sip, b"", Duration::from_millis(1500)),
        None,
        "and nothing more"
    );
}

#[test]
fn malformed_sip_gets_400_or_is_dropped_and_the_server_keeps_serving() {
    let mut pbx = Pbx::start();
    let sock = UdpSocket::bind("127.0.0.1:0").unwrap();
    let port = sock.local_addr().unwrap().port();
    let via = format!("Via: SIP/2.0/UDP 127.0.0.1:{port};branch=z9hG4bKbad1");
    let huge = format!(
        "OPTIONS sip:x SIP/2.0\r\n{via}\r\nX-Big: {}\r\n\r\n",
        "a".repeat(65_000)
    );
    let corpus: Vec<Vec<u8>> = vec![
        b"\x00\x01\x02\xff\xfe garbage".to_vec(),
        b"OPTIONS sip:127.0.0.1 SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.1:1".to_vec(),
        format!("OPTIONS sip:127.0.0.1 SIP/2.0\r\n{via}\r\nFrom: <sip:a@b>;tag=1\r\nTo: <sip:c@d>\r\nCSeq: 1 OPTIONS\r\nContent-Length: 0\r\n\r\n").into_bytes(),
        format!("OPTIONS sip:127.0.0.1 SIP/2.0\r\n{via}\r\nFrom: <sip:a@b>;tag=1\r\nTo: <sip:c@d>\r\nCall-ID: x\r\nContent-Length: 0\r\n\r\n").into_bytes(),
        b"OPTIONS sip:127.0.0.1 SIP/2.0\r\nFrom: <sip:a@b>;tag=1\r\nTo: <sip:c@d>\r\nCall-ID: x\r\nCSeq: 1 OPTIONS\r\n\r\n".to_vec(),
        format!("OPTIONS sip:127.0.0.1 SIP/2.0\r\n{via}\r\nFrom: <sip:a@b>;tag=1\r\nTo: <sip:c@d>\r\nCall-ID: x\r\nCSeq: 1 OPTIONS\r\nContent-Length: 500\r\n\r\nshort").into_bytes(),
        format!("OPTIONS sip:127.0.0.1 SIP/2.0\r\n{via}\r\nFrom: <sip:a@b>;tag=1\r\nTo: <sip:c@d>\r\nCall-ID: x\r\nCSeq: 1 INVITE\r\nContent-Length: 0\r\n\r\n").into_bytes(),
        huge.into_bytes(),
        b"SIP/2.0 200 OK\r\n\r\n".to_vec(),
        vec![b'A'; 1500],
    ];
    for msg in &corpus {
        if let Some(resp) = udp_exchange(&sock, pbx.sip, msg, Duration::from_millis(300)) {
            assert!(
                resp.starts_with("SIP/2.0 400"),
                "only 400 may answer garbage: {resp}"
            );
        }
    }
    // Over TCP too: garbage closes the connection, nothing else.
    {
        use std::io::Write;
        let mut tcp = std::net::TcpStream::connect(pbx.sip).unwrap();
        let _ = tcp.write_all(b"INVITE sip:x SIP/2.0\r\nContent-Length: -5\r\n\r\n");
        let _ = tcp.write_all(&[0u8; 20000]);
    }
    assert!(pbx.is_running(), "the server must survive the corpus");
    let ok = format!("OPTIONS sip:127.0.0.1 SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.1:{port};branch=z9hG4bKgood\r\nFrom: <sip:a@b>;tag=1\r\nTo: <sip:c@d>\r\nCall-ID: good\r\nCSeq: 1 OPTIONS\r\nContent-Length: 0\r\n\r\n");
    let resp =
        udp_exchange(&sock, pbx.sip, ok.as_bytes(), Duration::from_secs(5)).expect("still serving");
    assert!(resp.starts_with("SIP/2.0 200"), "{resp}");
}

/// Registers bob's SIPp phone, runs `callee_part` on it and `caller_part` as alice dialling `dial`.
fn call(pbx: &Pbx, dial: &str, caller_part: &str, callee_part: &str, final_code: &str) {
    let dir = tempfile::tempdir().unwrap();
    let callee_port = free_udp_port();
    register(pbx, "bob", "bob-secret", callee_port, callee_port, "u1");
    let callee_file = scenario(dir.path(), "callee.xml.in", callee_part, &[]);
    let callee = Sipp::spawn(
        &format!("callee-{callee_part}"),
        &callee_file,
        callee_port,
        &[],
    );
    std::thread::sleep(Duration::from_millis(300));
    let caller_file = scenario(
        dir.path(),
        "caller.xml.in",
        caller_part,
        &[("FINAL", final_code), ("BACK", "4")],
    );
    let target = pbx.sip.to_string();
    let caller = Sipp::spawn(
        &format!("caller-{caller_part}"),
        &caller_file,
        free_udp_port(),
        &["-s", dial, "-au", "alice", "-ap", "alice-secret", &target],
    );
    caller.expect_success();
    callee.expect_success();
}

#[test]
fn call_by_extension_caller_hangs_up() {
    require_sipp!();
    let pbx = pbx_with_users();
    call(
        &pbx,
        "102",
        "caller_hangs_up.part",
        "callee_waits_bye.part",
        "",
    );
}

#[test]
fn call_by_extension_callee_hangs_up() {
    require_sipp!();
    let pbx = pbx_with_users();
    call(
        &pbx,
        "102",
        "caller_is_hung_up.part",
        "callee_hangs_up.part",
        "",
    );
}

#[test]
fn cancel_before_answer_reaches_the_callee() {
    require_sipp!();
    let pbx = pbx_with_users();
    call(
        &pbx,
        "102",
        "caller_cancels.part",
        "callee_rings_until_cancel.part",
        "",
    );
}

#[test]
fn busy_callee_gives_486() {
    require_sipp!();
    let pbx = pbx_with_users();
    call(
        &pbx,
        "102",
        "caller_gets_final.part",
        "callee_busy.part",
        "486",
    );
}

fn dial_expecting(pbx: &Pbx, dial: &str, code: &str) {
    let dir = tempfile::tempdir().unwrap();
    let file = scenario(
        dir.path(),
        "caller.xml.in",
        "caller_gets_final.part",
        &[("FINAL", code), ("BACK", "4")],
    );
    Sipp::spawn(
        &format!("dial-{dial}-{code}"),
        &file,
        free_udp_port(),
        &[
            "-s",
            dial,
            "-au",
            "alice",
            "-ap",
            "alice-secret",
            &pbx.sip.to_string(),
        ],
    )
    .expect_success();
}

#[test]
fn unknown_extension_gives_404_and_unregistered_user_480() {
    require_sipp!();
    let pbx = pbx_with_users();
    dial_expecting(&pbx, "999", "404");
    dial_expecting(&pbx, "103", "480");
}

#[test]
fn every_device_of_the_user_rings_and_the_first_answer_wins() {
    require_sipp!();
    let pbx = pbx_with_users();
    let dir = tempfile::tempdir().unwrap();
    let desk = free_udp_port();
    let soft = free_udp_port();
    register(&pbx, "bob", "bob-secret", desk, desk, "u1");
    register(&pbx, "bob", "bob-secret", soft, soft, "u1");
    let answering = Sipp::spawn(
        "fork-answers",
        &scenario(dir.path(), "callee.xml.in", "callee_waits_bye.part", &[]),
        desk,
        &[],
    );
    let cancelled = Sipp::spawn(
        "fork-cancelled",
        &scenario(
            dir.path(),
            "callee.xml.in",
            "callee_rings_until_cancel.part",
            &[],
        ),
        soft,
        &[],
    );
    std::thread::sleep(Duration::from_millis(300));
    let caller_file = scenario(dir.path(), "caller.xml.in", "caller_hangs_up.part", &[]);
    Sipp::spawn(
        "fork-caller",
        &caller_file,
        free_udp_port(),
        &[
            "-s",
            "102",
            "-au",
            "alice",
            "-ap",
            "alice-secret",
            &pbx.sip.to_string(),
        ],
    )
    .expect_success();
    answering.expect_success();
    cancelled.expect_success();
}

#[test]
fn registrations_survive_a_restart() {
    require_sipp!();
    let pbx = pbx_with_users();
    let port = free_udp_port();
    register(&pbx, "bob", "bob-secret", port, port, "u1");
    let dir = pbx.stop();
    let pbx = Pbx::start_in(dir);
    assert_eq!(registration_count(&pbx), 1, "{}", registrations(&pbx));
    // And the restored binding is callable.
    let sdir = tempfile::tempdir().unwrap();
    let callee = Sipp::spawn(
        "restored-callee",
        &scenario(sdir.path(), "callee.xml.in", "callee_waits_bye.part", &[]),
        port,
        &[],
    );
    std::thread::sleep(Duration::from_millis(300));
    Sipp::spawn(
        "restored-caller",
        &scenario(sdir.path(), "caller.xml.in", "caller_hangs_up.part", &[]),
        free_udp_port(),
        &[
            "-s",
            "102",
            "-au",
            "alice",
            "-ap",
            "alice-secret",
            &pbx.sip.to_string(),
        ],
    )
    .expect_success();
    callee.expect_success();
}
