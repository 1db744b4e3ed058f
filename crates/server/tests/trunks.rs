//! SIP trunks end to end, with third-party peers playing the provider ("the carrier"):
//! SIPp as its registrar (checking the PBX's digest answers with `<verifyauth>`), as the
//! network calling our numbers, and as the far end of calls and invitations going out
//! (challenging them); baresip as a carrier calling from the trunk's address and as
//! users' phones, each sending a tone and recording what it hears, checked by content.

mod common;

use std::io::Write as _;
use std::net::UdpSocket;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::baresip::*;
use common::*;
use serde_json::{json, Value};

const TRUNK_USER: &str = "acct";
const TRUNK_PASSWORD: &str = "trunk-secret";
/// The trunk's caller ID, and the number of the Board room (801, access code 2468).
const MAIN_NUMBER: &str = "+3225550100";
/// Alice's direct line (rings extension 101; her caller ID on calls out).
const ALICE_DIRECT: &str = "+3225550101";
const HANG_UP_NUMBER: &str = "+3225550102";
const NOT_CONFIGURED_NUMBER: &str = "+3225550103";
/// Someone on the phone network, as the baresip carrier presents them.
const CALLER_NUMBER: &str = "+32475550199";
const CALLER_NAME: &str = "Jane Roe";
/// A number outside, dialled by users and invited by rooms.
const OUTSIDE_NUMBER: &str = "0475123456";

/// How the trunk reaches its provider (always 127.0.0.1).
struct TrunkSpec<'a> {
    port: u16,
    transport: &'a str,
    register: bool,
    password: &'a str,
}

impl TrunkSpec<'_> {
    fn udp(port: u16) -> Self {
        TrunkSpec {
            port,
            transport: "udp",
            register: false,
            password: TRUNK_PASSWORD,
        }
    }
}

fn create(pbx: &Pbx, path: &str, body: &Value) -> i64 {
    let (status, text) = pbx.api("POST", path, Some(&body.to_string()));
    assert_eq!(status, 201, "POST {path} {body}: {text}");
    serde_json::from_str::<Value>(&text).unwrap()["id"]
        .as_i64()
        .unwrap()
}

fn add_trunk(pbx: &Pbx, name: &str, spec: &TrunkSpec<'_>) -> i64 {
    create(
        pbx,
        "/api/v1/trunks",
        &json!({
            "name": name,
            "host": "127.0.0.1",
            "port": spec.port,
            "transport": spec.transport,
            "username": TRUNK_USER,
            "password": spec.password,
            "register": spec.register,
            "caller_id": MAIN_NUMBER,
        }),
    )
}

/// A PBX (not applied yet: a test may start the provider first) with Alice (101) and Bob
/// (102); rooms Sales (800, open) and Board (801, access code 2468); the
/// trunk "Carrier"; and incoming numbers: the main number → Board, Alice's direct line →
/// 101, one hanging up, one not configured. Returns the PBX and the trunk's id.
fn configure(spec: &TrunkSpec<'_>) -> (Pbx, i64) {
    let pbx = Pbx::start();
    pbx.create_user("Alice", "101", "alice", "alice-secret");
    pbx.create_user("Bob", "102", "bob", "bob-secret");
    create(
        &pbx,
        "/api/v1/conferences",
        &json!({"name": "Sales", "extension": "800"}),
    );
    let board = create(
        &pbx,
        "/api/v1/conferences",
        &json!({"name": "Board", "extension": "801", "access_code": "2468"}),
    );
    let trunk = add_trunk(&pbx, "Carrier", spec);
    for (number, destination) in [
        (
            MAIN_NUMBER,
            json!({"type": "conference", "conference_id": board}),
        ),
        (
            ALICE_DIRECT,
            json!({"type": "extension", "extension": "101"}),
        ),
        (HANG_UP_NUMBER, json!({"type": "hang_up"})),
        (NOT_CONFIGURED_NUMBER, json!({"type": "not_configured"})),
    ] {
        create(
            &pbx,
            "/api/v1/incoming-numbers",
            &json!({"number": number, "destination": destination}),
        );
    }
    (pbx, trunk)
}

fn get_json(pbx: &Pbx, path: &str) -> Value {
    let (status, text) = pbx.api("GET", path, None);
    assert_eq!(status, 200, "GET {path}: {text}");
    serde_json::from_str(&text).unwrap()
}

/// The trunk's live state (`live` of GET /api/v1/trunks/{id}).
fn trunk_live(pbx: &Pbx, trunk: i64) -> Value {
    get_json(pbx, &format!("/api/v1/trunks/{trunk}"))["live"].clone()
}

fn wait_trunk(pbx: &Pbx, trunk: i64, within: Duration, state: &str) -> Value {
    poll(
        within,
        || trunk_live(pbx, trunk),
        |l| l["registration"] == state,
    )
}

/// Invites someone into the room (`body` as POST …/invite takes it) and waits (bounded)
/// for the invitation's final state.
fn invitation_outcome(pbx: &Pbx, room: i64, body: &Value, within: Duration) -> Value {
    let (status, text) = pbx.api(
        "POST",
        &format!("/api/v1/conferences/{room}/invite"),
        Some(&body.to_string()),
    );
    assert_eq!(status, 202, "invite {body}: {text}");
    let id = serde_json::from_str::<Value>(&text).unwrap()["id"]
        .as_u64()
        .unwrap();
    poll(
        within,
        || get_json(pbx, &format!("/api/v1/invitations/{id}")),
        |v| !matches!(v["state"].as_str(), Some("calling" | "ringing")),
    )
}

/// The baresip "carrier": calls from the trunk's own address (127.0.0.1:`port`) without
/// credentials, presenting Jane Roe's number, and sends a `tone_hz` tone.
fn carrier_phone(pbx: &Pbx, port: u16, tone_hz: u32) -> Baresip {
    Baresip::with_account(
        &format!(
            "\"{CALLER_NAME}\" <sip:{CALLER_NUMBER}@127.0.0.1:{}>;regint=0;audio_codecs=PCMU",
            pbx.sip.port()
        ),
        port,
        tone_hz,
    )
}

/// A user's baresip phone, registered and answering by itself, sending a `tone_hz` tone.
fn registered_phone(pbx: &Pbx, user: &str, password: &str, tone_hz: u32) -> Baresip {
    let phone = Baresip::with_account(
        &format!(
            "<sip:{user}@127.0.0.1:{}>;auth_pass={password};answermode=auto;audio_codecs=PCMU",
            pbx.sip.port()
        ),
        free_udp_port(),
        tone_hz,
    );
    let registrations = poll(
        Duration::from_secs(10),
        || get_json(pbx, "/api/v1/registrations"),
        |r| {
            r.as_array()
                .is_some_and(|a| a.iter().any(|b| b["user"] == user))
        },
    );
    assert!(
        registrations.to_string().contains(&format!("\"{user}\"")),
        "{user}'s phone did not register: {registrations}\n{}",
        phone.log()
    );
    phone
}

/// The port a baresip phone's incoming RTP comes from (it logs it once established).
fn rtp_source(phone: &Baresip) -> u16 {
    let log = poll(
        Duration::from_secs(3),
        || phone.log(),
        |l| l.contains("receiving from 127.0.0.1:"),
    );
    log.split("receiving from 127.0.0.1:")
        .nth(1)
        .and_then(|rest| rest.split(|c: char| !c.is_ascii_digit()).next())
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("no incoming RTP logged:\n{log}"))
}

/// The messages a SIPp run received (`"received"`) or sent (`"sent"`), from its log.
fn sipp_messages(name: &str, direction: &str) -> Vec<String> {
    sipp_log(name, "messages")
        .split("----------------------------------------------- ")
        .filter_map(|entry| {
            let (banner, message) = entry.split_once("\n\n")?;
            banner
                .contains(&format!("message {direction}"))
                .then(|| message.trim().replace("\r\n", "\n"))
        })
        .collect()
}

fn header<'a>(message: &'a str, name: &str) -> Option<&'a str> {
    message.lines().find_map(|l| {
        let (n, v) = l.split_once(':')?;
        n.trim().eq_ignore_ascii_case(name).then(|| v.trim())
    })
}

/// The `m=audio` port of a message's SDP.
fn media_port(message: &str) -> u16 {
    message
        .lines()
        .find_map(|l| l.strip_prefix("m=audio "))
        .and_then(|rest| rest.split(' ').next())
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("no m=audio in {message}"))
}

fn digest_param<'a>(credentials: &'a str, name: &str) -> &'a str {
    credentials
        .trim_start_matches("Digest")
        .split(',')
        .filter_map(|p| p.trim().split_once('='))
        .find(|(k, _)| k.trim().eq_ignore_ascii_case(name))
        .map(|(_, v)| v.trim().trim_matches('"'))
        .unwrap_or_else(|| panic!("no {name} in {credentials}"))
}

/// MD5 in hex, by coreutils' md5sum (not the PBX's own digest code).
fn md5_hex(text: &str) -> String {
    let mut child = Command::new("md5sum")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("md5sum");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .next()
        .unwrap()
        .to_owned()
}

/// Checks digest credentials (RFC 2617, MD5, qop=auth) for `method` against the password.
fn assert_digest_answers(credentials: &str, method: &str, user: &str, password: &str) {
    let p = |name| digest_param(credentials, name);
    assert_eq!(p("username"), user, "{credentials}");
    assert_eq!(p("qop"), "auth", "{credentials}");
    let ha1 = md5_hex(&format!("{user}:{}:{password}", p("realm")));
    let ha2 = md5_hex(&format!("{method}:{}", p("uri")));
    let expected = md5_hex(&format!(
        "{ha1}:{}:{}:{}:auth:{ha2}",
        p("nonce"),
        p("nc"),
        p("cnonce")
    ));
    assert_eq!(p("response"), expected, "digest response of {credentials}");
}

/// Starts SIPp as the provider's registrar on `port` (see carrier_registrar.xml.in).
fn registrar(dir: &Path, name: &str, port: u16, vars: &[(&str, &str)]) -> Sipp {
    let mut all = vec![
        ("USER", TRUNK_USER),
        ("PASSWORD", TRUNK_PASSWORD),
        ("EXPIRES", "4"),
        ("CYCLES", "2"),
        ("REJECT", "403 Forbidden"),
        ("QUIET_MS", "4000"),
    ];
    all.retain(|(k, _)| !vars.iter().any(|(v, _)| v == k));
    all.extend_from_slice(vars);
    let file = template(
        dir,
        "carrier_registrar.xml.in",
        &format!("{name}.xml"),
        &all,
    );
    let sipp = Sipp::spawn(name, &file, port, &[]);
    std::thread::sleep(Duration::from_millis(300));
    sipp
}

/// SIPp placing a call from the phone network (carrier_caller.xml.in) from `local_port`
/// to `number`, expecting the final response `code`.
fn network_call(
    pbx: &Pbx,
    dir: &Path,
    name: &str,
    local_port: u16,
    ruri_user: &str,
    number: &str,
    code: &str,
) {
    let file = scenario(
        dir,
        "carrier_caller.xml.in",
        "caller_gets_final.part",
        &[("FINAL", code), ("BACK", "4"), ("RURI_USER", ruri_user)],
    );
    let renamed = dir.join(format!("{name}.xml"));
    std::fs::rename(&file, &renamed).unwrap();
    Sipp::spawn(
        name,
        &renamed,
        local_port,
        &[
            "-s",
            number,
            "-mp",
            &free_udp_port().to_string(),
            &pbx.sip.to_string(),
        ],
    )
    .expect_success();
}

// ---- registration ------------------------------------------------------------------

#[test]
fn the_trunk_registers_answering_the_challenge_and_refreshes_before_expiry() {
    require!("sipp", "sip-tester");
    let port = free_udp_port();
    let (pbx, trunk) = configure(&TrunkSpec {
        register: true,
        ..TrunkSpec::udp(port)
    });
    let dir = tempfile::tempdir().unwrap();
    // Two cycles of REGISTER → 401 → REGISTER with credentials (checked) → 200 granting
    // 4 s: the second is the refresh, which must come before the 4 s run out.
    let provider = registrar(dir.path(), "trunk-registrar-ok", port, &[]);
    pbx.apply();
    let live = wait_trunk(&pbx, trunk, Duration::from_secs(10), "registered");
    assert_eq!(live["registration"], "registered", "{live}");
    assert_eq!(live["status"], 200, "{live}");
    assert_eq!(live["address"], format!("127.0.0.1:{port}"), "{live}");
    assert!(
        live["expires_in"].as_u64().is_some_and(|s| s <= 4),
        "{live}"
    );
    let registered_at = Instant::now();
    provider.expect_success();
    let refreshed_after = registered_at.elapsed();
    assert!(
        (Duration::from_secs(1)..Duration::from_secs(4)).contains(&refreshed_after),
        "refreshed {refreshed_after:?} after registering for 4 s (half-way is right)"
    );
    assert_eq!(
        trunk_live(&pbx, trunk)["registration"],
        "registered",
        "still registered after the refresh"
    );
    let registers = sipp_messages("trunk-registrar-ok", "received");
    assert_eq!(registers.len(), 4, "{registers:#?}");
    let first = &registers[0];
    assert!(
        first.starts_with(&format!("REGISTER sip:127.0.0.1:{port} SIP/2.0")),
        "{first}"
    );
    assert!(
        header(first, "From")
            .is_some_and(|f| f.contains(&format!("sip:{TRUNK_USER}@127.0.0.1:{port}"))),
        "{first}"
    );
    // The Contact's user is what marks the provider's calls: a call from another address
    // of the provider, to that contact, for the number that hangs up, is the provider's
    // (603, not a challenge).
    let contact = header(first, "Contact").unwrap();
    let contact_user = contact
        .trim_start_matches("<sip:")
        .split('@')
        .next()
        .unwrap()
        .to_owned();
    assert!(contact_user.starts_with("confero-"), "{contact}");
    network_call(
        &pbx,
        dir.path(),
        "trunk-registered-contact-call",
        free_udp_port(),
        &contact_user,
        HANG_UP_NUMBER,
        "603",
    );
}

#[test]
fn refused_credentials_show_failed_with_the_status_and_cause_no_retry_storm() {
    require!("sipp", "sip-tester");
    let (forbidding, challenging) = (free_udp_port(), free_udp_port());
    let (pbx, first) = configure(&TrunkSpec {
        register: true,
        password: "wrong-password",
        ..TrunkSpec::udp(forbidding)
    });
    let second = add_trunk(
        &pbx,
        "Second carrier",
        &TrunkSpec {
            register: true,
            password: "wrong-password",
            ..TrunkSpec::udp(challenging)
        },
    );
    let dir = tempfile::tempdir().unwrap();
    // One provider answers wrong credentials with 403, the other with a fresh 401; both
    // then count the REGISTERs that still come for 4 s.
    let forbids = registrar(dir.path(), "trunk-registrar-403", forbidding, &[]);
    let challenges = registrar(
        dir.path(),
        "trunk-registrar-401",
        challenging,
        &[("REJECT", "401 Unauthorized")],
    );
    pbx.apply();
    let live = wait_trunk(&pbx, first, Duration::from_secs(5), "failed");
    assert_eq!(
        (live["registration"].as_str(), live["status"].as_u64()),
        (Some("failed"), Some(403)),
        "{live}"
    );
    assert!(
        live["summary"].as_str().is_some_and(|s| s.contains("403")),
        "{live}"
    );
    let live = wait_trunk(&pbx, second, Duration::from_secs(5), "failed");
    assert_eq!(
        (live["registration"].as_str(), live["status"].as_u64()),
        (Some("failed"), Some(401)),
        "{live}"
    );
    assert!(
        live["reason"]
            .as_str()
            .is_some_and(|r| r.contains("refused the credentials")),
        "{live}"
    );
    forbids.expect_success();
    challenges.expect_success();
    for (name, trunk) in [
        ("trunk-registrar-403", first),
        ("trunk-registrar-401", second),
    ] {
        let registers = sipp_messages(name, "received");
        assert!(
            (2..=3).contains(&registers.len()),
            "{name}: one challenge answered, at most one more, then quiet for 4 s; got {}",
            registers.len()
        );
        let live = trunk_live(&pbx, trunk);
        assert_eq!(live["registration"], "failed", "{live}");
        assert!(
            live["retry_in"].as_u64().is_some_and(|s| s >= 20),
            "the next attempt waits: {live}"
        );
    }
}

// ---- calls from the phone network ---------------------------------------------------

#[test]
fn a_carrier_call_to_a_room_number_enters_the_code_and_talks_with_an_invited_user() {
    require!("baresip", "baresip");
    let port = free_udp_port();
    let (pbx, _) = configure(&TrunkSpec::udp(port));
    pbx.apply();
    let board = conference_id(&pbx, "801");
    let bob = registered_phone(&pbx, "bob", "bob-secret", 440);
    let carrier = carrier_phone(&pbx, port, 880);
    carrier.dial(&pbx, MAIN_NUMBER);
    let list = wait_for_room(&pbx, board, Duration::from_secs(10), |l| {
        l.iter().any(|p| p["state"] == "entering_code")
    });
    let caller = list
        .iter()
        .find(|p| p["state"] == "entering_code")
        .unwrap_or_else(|| panic!("{list:?}\n{}", carrier.log()));
    // The network's caller ID is what the participant list shows.
    assert_eq!(caller["caller"], CALLER_NUMBER, "{list:?}");
    assert_eq!(caller["caller_name"], CALLER_NAME, "{list:?}");
    std::thread::sleep(Duration::from_millis(500));
    carrier.send_digits("2468#");
    let list = wait_for_room(&pbx, board, Duration::from_secs(10), |l| {
        l.iter().any(|p| p["state"] == "in_room")
    });
    assert!(
        list.iter()
            .any(|p| p["state"] == "in_room" && p["caller"] == CALLER_NUMBER),
        "the code let the caller in: {list:?}\n{}",
        carrier.log()
    );
    // Bob, invited, answers by himself and is in without the code.
    let inv = invitation_outcome(
        &pbx,
        board,
        &json!({"target": "102"}),
        Duration::from_secs(10),
    );
    assert_eq!(inv["state"], "answered", "{inv}\n{}", bob.log());
    let list = wait_for_room(&pbx, board, Duration::from_secs(10), |l| {
        l.iter().filter(|p| p["state"] == "in_room").count() == 2
    });
    assert_eq!(
        list.iter().filter(|p| p["state"] == "in_room").count(),
        2,
        "{list:?}"
    );
    std::thread::sleep(Duration::from_secs(3));
    carrier.hangup();
    bob.hangup();
    std::thread::sleep(Duration::from_millis(500));
    assert_each_hears_the_other([
        ("carrier", &carrier, 440.0, 880.0),
        ("bob", &bob, 880.0, 440.0),
    ]);
}

#[test]
fn a_carrier_call_to_a_direct_line_rings_the_users_phone_with_media_through_the_pbx() {
    require!("baresip", "baresip");
    let port = free_udp_port();
    let (pbx, _) = configure(&TrunkSpec::udp(port));
    pbx.apply();
    let alice = registered_phone(&pbx, "alice", "alice-secret", 440);
    let carrier = carrier_phone(&pbx, port, 880);
    assert_eq!(metric(&pbx, "confero_rtp_ports_in_use"), 0.0);
    carrier.dial(&pbx, ALICE_DIRECT);
    let calls = poll(
        Duration::from_secs(10),
        || get_json(&pbx, "/api/v1/calls"),
        |c| {
            c.as_array()
                .is_some_and(|a| a.iter().any(|c| c["state"] == "answered"))
        },
    );
    let call = calls
        .as_array()
        .and_then(|a| a.iter().find(|c| c["state"] == "answered"))
        .unwrap_or_else(|| panic!("{calls}\n{}\n{}", carrier.log(), alice.log()));
    assert_eq!(
        (call["caller"].as_str(), call["callee"].as_str()),
        (Some(CALLER_NUMBER), Some("101")),
        "{calls}"
    );
    // Alice's phone was told who is calling.
    let shown = format!("answering call on line 1 from sip:{CALLER_NUMBER}@");
    assert!(alice.log().contains(&shown), "{shown}:\n{}", alice.log());
    // Anchored: each leg ends on an RTP port of the PBX (the phone never sees the
    // carrier's address, nor the carrier the phone's).
    assert_eq!(
        wait_for_metric(
            &pbx,
            "confero_rtp_ports_in_use",
            2.0,
            Duration::from_secs(3)
        ),
        2.0
    );
    // Each phone's media comes from the PBX's ports, not from the other phone's (both
    // phones take theirs from 30000-32000).
    for (who, phone) in [("carrier", &carrier), ("alice", &alice)] {
        let port = rtp_source(phone);
        assert!(
            !(30000..=32000).contains(&port),
            "{who} receives from {port}, a phone's port:\n{}",
            phone.log()
        );
    }
    std::thread::sleep(Duration::from_secs(3));
    carrier.hangup();
    // The PBX hangs up on Alice's phone and frees both ports.
    assert_eq!(
        wait_for_metric(
            &pbx,
            "confero_rtp_ports_in_use",
            0.0,
            Duration::from_secs(5)
        ),
        0.0
    );
    let calls = poll(
        Duration::from_secs(3),
        || get_json(&pbx, "/api/v1/calls"),
        |c| c.as_array().is_some_and(Vec::is_empty),
    );
    assert_eq!(calls, json!([]), "the call is over");
    std::thread::sleep(Duration::from_millis(300));
    assert_each_hears_the_other([
        ("carrier", &carrier, 440.0, 880.0),
        ("alice", &alice, 880.0, 440.0),
    ]);
}

#[test]
fn numbers_set_to_hang_up_or_not_configured_and_unknown_numbers_are_refused() {
    require!("sipp", "sip-tester");
    let port = free_udp_port();
    let (pbx, _) = configure(&TrunkSpec::udp(port));
    pbx.apply();
    let dir = tempfile::tempdir().unwrap();
    // From the trunk's address; the numbers as providers write them (international,
    // national).
    for (number, code, reason) in [
        (HANG_UP_NUMBER, "603", "Decline"),
        ("025550103", "480", "Number Not Configured"),
        ("+3225559999", "404", "Not Found"),
    ] {
        let name = format!("trunk-did-{code}");
        network_call(&pbx, dir.path(), &name, port, "[service]", number, code);
        let received = sipp_messages(&name, "received");
        assert!(
            received
                .iter()
                .any(|m| m.starts_with(&format!("SIP/2.0 {code} {reason}"))),
            "{received:#?}"
        );
    }
    let (status, body) = pbx.api("GET", "/api/v1/calls", None);
    assert_eq!((status, body.trim()), (200, "[]"));
}

// ---- calls to the phone network -----------------------------------------------------

#[test]
fn a_user_dialling_a_number_reaches_the_carrier_with_caller_id_and_credentials() {
    require!("sipp", "sip-tester");
    let port = free_udp_port();
    let (pbx, _) = configure(&TrunkSpec::udp(port));
    pbx.apply();
    let dir = tempfile::tempdir().unwrap();
    // The carrier (carrier_challenges.part) challenges with 407, checks the caller ID in
    // the retry's From and P-Asserted-Identity, answers and waits for BYE; the retry's
    // credentials are checked below (SIPp's <verifyauth> reads Authorization only).
    let carrier_file = scenario(
        dir.path(),
        "callee.xml.in",
        "carrier_challenges.part",
        &[
            ("CODE", "407"),
            ("REASON", "Proxy Authentication Required"),
            ("HEADER", "Proxy-Authenticate"),
            ("CALLER", r"Alice.*sip:\+3225550101@"),
            (
                "VERIFY",
                r#"<ereg regexp="Digest" search_in="hdr" header="Proxy-Authorization:" assign_to="credentials_ok"/>"#,
            ),
        ],
    );
    let carrier_media = free_udp_port();
    let carrier = Sipp::spawn(
        "trunk-out-carrier",
        &carrier_file,
        port,
        &["-mp", &carrier_media.to_string()],
    );
    std::thread::sleep(Duration::from_millis(300));
    // Alice (digest-authenticated) dials a 10-digit number, talks a second, hangs up.
    let caller_media = free_udp_port();
    let caller_file = scenario(dir.path(), "caller.xml.in", "caller_hangs_up.part", &[]);
    Sipp::spawn(
        "trunk-out-alice",
        &caller_file,
        free_udp_port(),
        &[
            "-s",
            OUTSIDE_NUMBER,
            "-au",
            "alice",
            "-ap",
            "alice-secret",
            "-mp",
            &caller_media.to_string(),
            &pbx.sip.to_string(),
        ],
    )
    .expect_success();
    carrier.expect_success();

    let invites: Vec<String> = sipp_messages("trunk-out-carrier", "received")
        .into_iter()
        .filter(|m| m.starts_with("INVITE "))
        .collect();
    assert_eq!(invites.len(), 2, "{invites:#?}");
    let retry = &invites[1];
    assert!(
        retry.starts_with(&format!(
            "INVITE sip:{OUTSIDE_NUMBER}@127.0.0.1:{port} SIP/2.0"
        )),
        "{retry}"
    );
    let challenge = sipp_messages("trunk-out-carrier", "sent")
        .into_iter()
        .find(|m| m.starts_with("SIP/2.0 407"))
        .unwrap();
    let credentials = header(retry, "Proxy-Authorization").unwrap();
    assert_eq!(
        digest_param(credentials, "nonce"),
        digest_param(header(&challenge, "Proxy-Authenticate").unwrap(), "nonce"),
        "answers the challenge it got"
    );
    assert_eq!(digest_param(credentials, "realm"), "carrier.test");
    assert_digest_answers(credentials, "INVITE", TRUNK_USER, TRUNK_PASSWORD);
    // Media through the PBX: neither side is offered the other's port.
    let offered_to_carrier = media_port(retry);
    assert_ne!(offered_to_carrier, caller_media, "{retry}");
    let answer_to_alice = sipp_messages("trunk-out-alice", "received")
        .into_iter()
        .find(|m| m.starts_with("SIP/2.0 200") && m.contains("m=audio"))
        .unwrap();
    assert_ne!(
        media_port(&answer_to_alice),
        carrier_media,
        "{answer_to_alice}"
    );
    assert_ne!(media_port(&answer_to_alice), offered_to_carrier);
}

#[test]
fn a_stranger_dialling_a_number_is_refused_and_the_carrier_hears_nothing() {
    require!("sipp", "sip-tester");
    let port = free_udp_port();
    // The carrier's port: anything the PBX sends the trunk lands here.
    let carrier = UdpSocket::bind(("127.0.0.1", port)).unwrap();
    let (pbx, _) = configure(&TrunkSpec::udp(port));
    pbx.apply();
    let dir = tempfile::tempdir().unwrap();
    // No credentials at all (as if it were the provider, with P-Asserted-Identity): 407.
    network_call(
        &pbx,
        dir.path(),
        "trunk-stranger",
        free_udp_port(),
        "[service]",
        OUTSIDE_NUMBER,
        "407",
    );
    // Credentials of nobody: challenged again.
    let file = scenario(
        dir.path(),
        "caller.xml.in",
        "caller_gets_final.part",
        &[("FINAL", "407"), ("BACK", "4")],
    );
    Sipp::spawn(
        "trunk-stranger-guessing",
        &file,
        free_udp_port(),
        &[
            "-s",
            OUTSIDE_NUMBER,
            "-au",
            "mallory",
            "-ap",
            "guess",
            &pbx.sip.to_string(),
        ],
    )
    .expect_success();
    carrier
        .set_read_timeout(Some(Duration::from_secs(2)))
        .unwrap();
    let mut buf = [0u8; 4096];
    if let Ok((n, from)) = carrier.recv_from(&mut buf) {
        panic!(
            "the carrier got {n} bytes from {from}:\n{}",
            String::from_utf8_lossy(&buf[..n])
        );
    }
}

// ---- invitations to numbers ---------------------------------------------------------

#[test]
fn inviting_a_number_goes_out_through_the_trunk_answered_or_busy() {
    require!("sipp", "sip-tester");
    let port = free_udp_port();
    let (pbx, _) = configure(&TrunkSpec::udp(port));
    pbx.apply();
    let sales = conference_id(&pbx, "800");
    let dir = tempfile::tempdir().unwrap();
    // The carrier challenges with 401, checks the answer with <verifyauth> and the caller
    // ID (the room as the name, the trunk's number), answers, and waits for BYE.
    let verify = format!(
        r#"<verifyauth assign_to="credentials_ok" username="{TRUNK_USER}" password="{TRUNK_PASSWORD}"/>"#
    );
    let file = scenario(
        dir.path(),
        "callee.xml.in",
        "carrier_challenges.part",
        &[
            ("CODE", "401"),
            ("REASON", "Unauthorized"),
            ("HEADER", "WWW-Authenticate"),
            ("CALLER", r"Sales \(800\).*sip:\+3225550100@"),
            ("VERIFY", &verify),
        ],
    );
    let carrier = Sipp::spawn(
        "trunk-invite-answers",
        &file,
        port,
        &["-mp", &free_udp_port().to_string()],
    );
    std::thread::sleep(Duration::from_millis(300));
    let inv = invitation_outcome(
        &pbx,
        sales,
        &json!({ "target": OUTSIDE_NUMBER }),
        Duration::from_secs(10),
    );
    assert_eq!(
        (inv["state"].as_str(), inv["status"].as_u64()),
        (Some("answered"), Some(200)),
        "{inv}"
    );
    let pid = inv["participant_id"].as_u64().unwrap();
    let list = wait_for_room(&pbx, sales, Duration::from_secs(8), |l| {
        l.iter().any(|p| p["id"] == pid && p["state"] == "in_room")
    });
    assert!(
        list.iter()
            .any(|p| p["id"] == pid && p["state"] == "in_room" && p["caller"] == OUTSIDE_NUMBER),
        "{list:?}"
    );
    let (status, _) = pbx.api(
        "POST",
        &format!("/api/v1/conferences/{sales}/participants/{pid}/kick"),
        Some("{}"),
    );
    assert_eq!(status, 204);
    carrier.expect_success();

    // Busy at the other end.
    let file = scenario(dir.path(), "callee.xml.in", "callee_busy.part", &[]);
    let carrier = Sipp::spawn(
        "trunk-invite-busy",
        &file,
        port,
        &["-mp", &free_udp_port().to_string()],
    );
    std::thread::sleep(Duration::from_millis(300));
    let inv = invitation_outcome(
        &pbx,
        sales,
        &json!({ "target": OUTSIDE_NUMBER }),
        Duration::from_secs(10),
    );
    assert_eq!(
        (inv["state"].as_str(), inv["status"].as_u64()),
        (Some("busy"), Some(486)),
        "{inv}"
    );
    carrier.expect_success();

    // Ringing and nobody answering within the invitation's timeout: no answer, and the
    // carrier gets CANCEL.
    let file = scenario(
        dir.path(),
        "callee.xml.in",
        "callee_rings_until_cancel.part",
        &[],
    );
    let carrier = Sipp::spawn(
        "trunk-invite-unanswered",
        &file,
        port,
        &["-mp", &free_udp_port().to_string()],
    );
    std::thread::sleep(Duration::from_millis(300));
    let inv = invitation_outcome(
        &pbx,
        sales,
        &json!({ "target": OUTSIDE_NUMBER, "timeout": 2 }),
        Duration::from_secs(10),
    );
    assert_eq!(inv["state"], "no_answer", "{inv}");
    carrier.expect_success();
}

// ---- bad input, providers down ------------------------------------------------------

#[test]
fn malformed_numbers_are_refused_and_a_refused_connection_fails_fast() {
    // A TCP trunk whose provider refuses connections, registering.
    let port = free_tcp_port();
    let (pbx, trunk) = configure(&TrunkSpec {
        transport: "tcp",
        register: true,
        ..TrunkSpec::udp(port)
    });
    pbx.apply();
    let sales = conference_id(&pbx, "800");
    for target in ["0475abc123", "123456789012345678901", "+", "+32 475"] {
        let (status, text) = pbx.api(
            "POST",
            &format!("/api/v1/conferences/{sales}/invite"),
            Some(&json!({ "target": target }).to_string()),
        );
        let v: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
        assert_eq!(
            (status, &v["field"]),
            (400, &json!("target")),
            "{target}: {text}"
        );
    }
    let live = wait_trunk(&pbx, trunk, Duration::from_secs(5), "failed");
    assert_eq!(
        (live["registration"].as_str(), live["status"].as_u64()),
        (Some("failed"), Some(503)),
        "{live}"
    );
    assert!(
        live["reason"]
            .as_str()
            .is_some_and(|r| r.contains(&format!("127.0.0.1:{port}"))),
        "names what it could not reach: {live}"
    );
    assert!(
        live["retry_in"].as_u64().is_some_and(|s| s >= 20),
        "no retry storm: {live}"
    );
    let started = Instant::now();
    let inv = invitation_outcome(
        &pbx,
        sales,
        &json!({ "target": OUTSIDE_NUMBER }),
        Duration::from_secs(10),
    );
    assert_eq!(
        (inv["state"].as_str(), inv["status"].as_u64()),
        (Some("failed"), Some(503)),
        "{inv}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "failed after {:?}",
        started.elapsed()
    );
}

#[test]
fn a_provider_that_never_answers_register_blocks_nothing_and_ends_in_failed() {
    require!("sipp", "sip-tester");
    let port = free_udp_port();
    // The provider: a socket that reads and never answers.
    let silent = UdpSocket::bind(("127.0.0.1", port)).unwrap();
    silent
        .set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let (pbx, trunk) = configure(&TrunkSpec {
        register: true,
        ..TrunkSpec::udp(port)
    });
    let started = Instant::now();
    pbx.apply();
    let registers = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    // Counts what reaches the provider until long after the test ends (detached).
    let _counter = {
        let registers = registers.clone();
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            let deadline = Instant::now() + Duration::from_secs(45);
            while Instant::now() < deadline {
                if let Ok((n, _)) = silent.recv_from(&mut buf) {
                    if buf[..n].starts_with(b"REGISTER ") {
                        registers.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                    }
                }
            }
        })
    };
    let live = wait_trunk(&pbx, trunk, Duration::from_secs(3), "registering");
    assert_eq!(live["registration"], "registering", "{live}");
    // Meanwhile users register and call each other as usual.
    let dir = tempfile::tempdir().unwrap();
    let bob_port = free_udp_port();
    register(&pbx, "bob", "bob-secret", bob_port, bob_port, "u1");
    let callee_file = scenario(dir.path(), "callee.xml.in", "callee_waits_bye.part", &[]);
    let callee = Sipp::spawn("trunk-silent-callee", &callee_file, bob_port, &[]);
    std::thread::sleep(Duration::from_millis(300));
    let caller_file = scenario(dir.path(), "caller.xml.in", "caller_hangs_up.part", &[]);
    Sipp::spawn(
        "trunk-silent-caller",
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
    callee.expect_success();
    assert_eq!(
        trunk_live(&pbx, trunk)["registration"],
        "registering",
        "the call did not wait for the provider"
    );
    // The REGISTER transaction times out (64·T1): failed with 408, and a later retry.
    let live = wait_trunk(&pbx, trunk, Duration::from_secs(40), "failed");
    assert_eq!(
        (live["registration"].as_str(), live["status"].as_u64()),
        (Some("failed"), Some(408)),
        "{live}"
    );
    assert!(live["retry_in"].as_u64().is_some_and(|s| s >= 20), "{live}");
    let took = started.elapsed();
    std::thread::sleep(Duration::from_secs(1));
    let sent = registers.load(std::sync::atomic::Ordering::SeqCst);
    assert!(
        (1..=12).contains(&sent),
        "one REGISTER and its retransmissions over {took:?}, not a storm: {sent}"
    );
}
