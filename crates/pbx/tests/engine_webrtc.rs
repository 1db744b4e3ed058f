//! Browser offers on a virtual clock: a DTLS-SRTP offer is handed to the media bridge,
//! the INVITE waits for its answer, and the 200 OK carries exactly that answer; a refusal
//! gives 488, a CANCEL meanwhile gives 487, and nothing leaks.

mod common;

use std::time::Duration;

use common::*;
use confero_media::codec::CodecKind;
use confero_media::webrtc::Answer;
use confero_pbx::engine::{LegId, MediaCommand, MediaEvent};
use confero_sip::digest;
use confero_sip::message::Message;
use confero_sip::transport::{ConnId, Peer, Transport};
use confero_sip::Name;

/// Chrome's audio offer, trimmed to what matters here.
const CHROME_OFFER: &str = "v=0\r\no=- 4611731400430051336 2 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\na=group:BUNDLE 0\r\na=msid-semantic: WMS\r\nm=audio 9 UDP/TLS/RTP/SAVPF 111 9 0 8 126\r\nc=IN IP4 0.0.0.0\r\na=rtcp:9 IN IP4 0.0.0.0\r\na=candidate:1 1 udp 2122260223 127.0.0.1 50000 typ host\r\na=ice-ufrag:abcd\r\na=ice-pwd:0123456789abcdefghijklmn\r\na=fingerprint:sha-256 AA:BB:CC:DD:EE:FF:00:11:22:33:44:55:66:77:88:99:AA:BB:CC:DD:EE:FF:00:11:22:33:44:55:66:77:88:99\r\na=setup:actpass\r\na=mid:0\r\na=sendrecv\r\na=rtcp-mux\r\na=rtpmap:111 opus/48000/2\r\na=rtpmap:9 G722/8000\r\na=rtpmap:0 PCMU/8000\r\na=rtpmap:8 PCMA/8000\r\na=rtpmap:126 telephone-event/8000\r\n";

/// What the bridge agreed with the browser: G.722, events on 126.
fn agreed(sdp: &str) -> Answer {
    Answer {
        sdp: sdp.to_owned(),
        codec: CodecKind::G722,
        payload_type: 9,
        dtmf_payload_type: Some(126),
        two_way: true,
    }
}

/// The OpenWebRtc command the engine sent: (leg, port, offer).
fn open_webrtc(h: &mut Harness) -> (LegId, u16, String) {
    media(h)
        .into_iter()
        .find_map(|c| match c {
            MediaCommand::OpenWebRtc { leg, port, offer } => Some((leg, port, offer)),
            _ => None,
        })
        .expect("the offer goes to the media bridge")
}

#[test]
fn a_browser_offer_is_answered_with_the_media_engines_answer_then_joins_the_room() {
    let mut h = Harness::new();
    let out = dial_offering(&mut h, "800", CHROME_OFFER);
    assert!(
        !out.iter().any(|(_, m)| status(m).is_some_and(|c| c >= 200)),
        "nothing final before the answer: {out:?}"
    );
    let (leg, port, offer) = open_webrtc(&mut h);
    assert!(offer.contains("UDP/TLS/RTP/SAVPF"));
    let answer = format!("v=0\r\no=str0m 99 2 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\nm=audio {port} UDP/TLS/RTP/SAVPF 9 126\r\n");
    h.engine.handle_media_event(
        h.now,
        MediaEvent::WebRtcAnswer {
            leg,
            answer: agreed(&answer),
        },
    );
    let out = h.out();
    let ok = out
        .iter()
        .find(|(p, m)| *p == 5000 && status(m) == Some(200))
        .map(|(_, m)| response(m).clone())
        .expect("the browser gets 200");
    assert_eq!(String::from_utf8_lossy(&ok.body), answer);
    let people = h.engine.conference_participants();
    assert_eq!(people.len(), 1);
    assert_eq!(people[0].codec, "G722");
    assert_eq!(
        people[0].state, "entering_code",
        "the receptionist asks, as for anyone"
    );
}

#[test]
fn a_refused_or_cancelled_browser_offer_frees_its_port() {
    let mut h = Harness::new();
    dial_offering(&mut h, "800", CHROME_OFFER);
    let (leg, _, _) = open_webrtc(&mut h);
    h.engine.handle_media_event(
        h.now,
        MediaEvent::Failed {
            leg,
            reason: "no codec in common".into(),
        },
    );
    assert_eq!(final_code(&h.out()), Some(488));
    assert!(media(&mut h)
        .iter()
        .any(|c| matches!(c, MediaCommand::Close { leg: l } if *l == leg)));
    assert_eq!(h.engine.rtp_ports_in_use(), 0);
    assert!(h.engine.conference_participants().is_empty());

    // A second try, cancelled while the media bridge works.
    let mut h = Harness::new();
    dial_offering(&mut h, "800", CHROME_OFFER);
    open_webrtc(&mut h);
    h.send(5000, "CANCEL sip:800@127.0.0.1 SIP/2.0\nVia: SIP/2.0/UDP 127.0.0.1:5000;branch=z9hG4bKi2;rport\nFrom: <sip:alice@127.0.0.1>;tag=caller\nTo: <sip:800@127.0.0.1>\nCall-ID: call-1\nCSeq: 2 CANCEL\nMax-Forwards: 70\nContent-Length: 0\n\n");
    let out = h.out();
    assert!(out.iter().any(|(_, m)| status(m) == Some(487)), "{out:?}");
    assert_eq!(h.engine.rtp_ports_in_use(), 0);

    // And one the media bridge never answers: 488 after the guard.
    let mut h = Harness::new();
    dial_offering(&mut h, "800", CHROME_OFFER);
    open_webrtc(&mut h);
    h.advance(Duration::from_secs(11));
    assert_eq!(final_code(&h.out()), Some(488));
    assert_eq!(h.engine.rtp_ports_in_use(), 0);
}

fn final_code(out: &[(u16, confero_sip::message::Message)]) -> Option<u16> {
    out.iter()
        .filter_map(|(_, m)| status(m))
        .find(|c| *c >= 200)
}

/// Bob's browser, registered over a WebSocket (connection 1, from port 61000).
fn browser_peer() -> Peer {
    Peer {
        transport: Transport::Ws,
        addr: "127.0.0.1:61000".parse().unwrap(),
        conn: Some(ConnId(1)),
    }
}

fn ws_register(h: &mut Harness) {
    let text = |cseq: u32, auth: &str| {
        format!("REGISTER sip:127.0.0.1 SIP/2.0\nVia: SIP/2.0/WS abc.invalid;branch=z9hG4bKws{cseq}\nFrom: <sip:bob@127.0.0.1>;tag=b1\nTo: <sip:bob@127.0.0.1>\nCall-ID: ws-reg\nCSeq: {cseq} REGISTER\nContact: <sip:q7w8e9@192.0.2.9;transport=ws>\nExpires: 3600\n{auth}Content-Length: 0\n\n")
    };
    h.send_via(browser_peer(), &text(1, ""));
    let out = h.out();
    let challenge = challenge_of(&out[0].1, Name::WWW_AUTHENTICATE, "MD5");
    let answer = digest::answer_challenge(
        &challenge,
        "REGISTER",
        "sip:127.0.0.1",
        "bob",
        "bob-pw",
        1,
        "c",
    )
    .unwrap();
    h.send_via(
        browser_peer(),
        &text(2, &format!("Authorization: {answer}\n")),
    );
    assert_eq!(status(&h.out()[0].1), Some(200));
}

#[test]
fn a_desk_phone_calling_a_browser_user_is_anchored_and_the_browser_gets_a_webrtc_offer() {
    let mut h = Harness::new();
    ws_register(&mut h);
    let out = dial(&mut h, "102");
    assert!(
        requests_to(&out, 61000, "INVITE").is_empty(),
        "the browser's INVITE waits for the media bridge's offer"
    );
    let (leg, port) = media(&mut h)
        .into_iter()
        .find_map(|c| match c {
            MediaCommand::OfferWebRtc { leg, port } => Some((leg, port)),
            _ => None,
        })
        .expect("a WebRTC offer is asked for");
    let offer = format!("v=0\r\no=str0m 1 1 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\nm=audio {port} UDP/TLS/RTP/SAVPF 9 0 8 101\r\nc=IN IP4 127.0.0.1\r\na=rtpmap:9 G722/8000\r\na=rtpmap:101 telephone-event/8000\r\n");
    h.engine.handle_media_event(
        h.now,
        MediaEvent::WebRtcOffer {
            leg,
            offer: offer.clone(),
        },
    );
    let out = h.out();
    let invite = requests_to(&out, 61000, "INVITE").remove(0);
    assert_eq!(String::from_utf8_lossy(&invite.body), offer);
    // The browser answers: its SDP goes to the media bridge, Alice's phone gets our
    // plain answer, and both legs share a private mix.
    let answer = "v=0\r\no=- 5 2 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\nm=audio 9 UDP/TLS/RTP/SAVPF 9 101\r\nc=IN IP4 0.0.0.0\r\na=rtpmap:9 G722/8000\r\na=rtpmap:101 telephone-event/8000\r\n";
    let raw = |n: Name| invite.headers.get_raw(&n).next().unwrap().to_string();
    let ok = format!(
        "SIP/2.0 200 OK\nVia: {}\nFrom: {}\nTo: {};tag=br\nCall-ID: {}\nCSeq: {}\nContact: <sip:q7w8e9@192.0.2.9;transport=ws>\nContent-Type: application/sdp\nContent-Length: {}\n\n{}",
        raw(Name::VIA),
        raw(Name::FROM),
        raw(Name::TO),
        raw(Name::CALL_ID),
        raw(Name::CSEQ),
        answer.len(),
        answer.replace("\r\n", "\n")
    );
    h.send_via(browser_peer(), &ok);
    let out = h.out();
    assert!(out
        .iter()
        .any(|(p, m)| *p == 5000 && status(m) == Some(200)
            && matches!(m, Message::Response(r) if String::from_utf8_lossy(&r.body).contains("RTP/AVP"))));
    let cmds = media(&mut h);
    assert!(
        cmds.iter()
            .any(|c| matches!(c, MediaCommand::AnswerWebRtc { leg: l, .. } if *l == leg)),
        "{cmds:?}"
    );
    let mixes: Vec<_> = cmds
        .iter()
        .filter_map(|c| match c {
            MediaCommand::Mix { leg, mix } => Some((*leg, *mix)),
            _ => None,
        })
        .collect();
    assert_eq!(mixes.len(), 2, "{cmds:?}");
    assert!(
        mixes.iter().any(|(l, _)| *l == leg),
        "the browser's leg is the offered one"
    );
    assert_eq!(h.engine.calls()[0].state, "answered");
}
