//! Trunks on a virtual clock: registration to a provider (digest, refresh, back-off),
//! calls from the phone network routed by incoming number, users calling numbers through
//! the trunk with anchored media, invitations to numbers. The "provider" is scripted text
//! on port 7000; phones are on 5000 (Alice) and 6000 (Bob).

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use common::*;
use confero_pbx::config::TrunkTransport;
use confero_pbx::engine::{InvitationState, LegId, MediaCommand, MixId, RegistrationState};
use confero_sip::digest;
use confero_sip::message::{Message, Request};
use confero_sip::transport::{Peer, Transport};

/// REGISTERs sent to the provider, retransmissions counted once.
fn registers(out: &[(u16, Message)]) -> Vec<Request> {
    let mut seen = std::collections::HashSet::new();
    requests_to(out, CARRIER, "REGISTER")
        .into_iter()
        .filter(|r| seen.insert(r.top_via_branch()))
        .collect()
}

/// The provider's registration state.
fn registration(h: &Harness) -> (RegistrationState, Option<u16>) {
    let s = h.engine.trunk_statuses(h.now).remove(0);
    (s.registration, s.status)
}

#[test]
fn the_pbx_registers_answers_the_challenge_and_refreshes() {
    let mut h = with_trunk(TrunkTransport::Udp, true);
    let reg = requests_to(&h.out(), CARRIER, "REGISTER").remove(0);
    assert_eq!(registration(&h).0, RegistrationState::Registering);
    assert!(header_of(&reg, "From")
        .unwrap()
        .contains("sip:acct@127.0.0.1:7000"));
    let contact = header_of(&reg, "Contact").unwrap();
    assert!(
        contact.contains("confero-") && contact.contains("127.0.0.1:5060"),
        "{contact}"
    );
    assert_eq!(header_of(&reg, "Expires").as_deref(), Some("3600"));

    let www = format!("WWW-Authenticate: {}\n", challenge("carrier"));
    h.send(CARRIER, &reply(&reg, 401, "c1", &www, ""));
    let reg2 = requests_to(&h.out(), CARRIER, "REGISTER").remove(0);
    assert_eq!(reg2.cseq().unwrap().0, reg.cseq().unwrap().0 + 1);
    assert_eq!(reg2.call_id(), reg.call_id(), "same registration Call-ID");
    let creds = digest::credentials_from(&reg2, false).expect("Authorization");
    assert!(digest::verify(&creds, "REGISTER", TRUNK_PASSWORD));

    let granted = format!("Contact: {contact};expires=120\n");
    h.send(CARRIER, &reply(&reg2, 200, "c1", &granted, ""));
    assert_eq!(registration(&h), (RegistrationState::Registered, Some(200)));
    assert!(h.out().is_empty());
    h.advance(Duration::from_secs(59));
    assert!(registers(&h.out()).is_empty());
    h.advance(Duration::from_secs(2));
    let refresh = registers(&h.out());
    assert_eq!(
        refresh.len(),
        1,
        "refreshed half-way through a short interval"
    );
}

#[test]
fn a_refusing_provider_sees_a_trickle_of_retries_not_a_storm() {
    let mut h = with_trunk(TrunkTransport::Udp, true);
    let mut sent = 0;
    let mut pending = requests_to(&h.out(), CARRIER, "REGISTER");
    let start = h.now;
    while h.now - start < Duration::from_secs(15 * 60) {
        for reg in pending.drain(..) {
            sent += 1;
            h.send(CARRIER, &reply(&reg, 403, "c", "", ""));
        }
        assert_eq!(registration(&h).0, RegistrationState::Failed);
        h.advance(Duration::from_secs(10));
        pending = registers(&h.out());
    }
    // 0 s, then 30, 90, 210, 450 s later (doubling back-off): five in fifteen minutes.
    assert_eq!(sent, 5);
    let s = h.engine.trunk_statuses(h.now).remove(0);
    assert_eq!(s.status, Some(403));
    assert!(s.retry_unix.is_some());
}

#[test]
fn a_silent_provider_fails_after_the_transaction_timeout_and_is_retried_later() {
    let mut h = with_trunk(TrunkTransport::Udp, true);
    assert_eq!(requests_to(&h.out(), CARRIER, "REGISTER").len(), 1);
    h.advance(Duration::from_secs(33));
    let (state, status) = registration(&h);
    assert_eq!((state, status), (RegistrationState::Failed, Some(408)));
    let s = h.engine.trunk_statuses(h.now).remove(0);
    assert_eq!(s.reason.as_deref(), Some("no answer from the provider"));
    h.out();
    h.advance(Duration::from_secs(31));
    assert_eq!(registers(&h.out()).len(), 1, "one retry");
}

#[test]
fn a_call_for_a_number_routed_to_a_room_reaches_the_receptionist_with_its_caller_id() {
    let mut h = with_trunk(TrunkTransport::Udp, false);
    h.out();
    // National format in the Request-URI; the configured number is international.
    h.send(
        CARRIER,
        &carrier_invite(CARRIER, "025550100", "025550100", "in-1"),
    );
    let out = h.out();
    assert_eq!(
        final_status(&out, CARRIER),
        Some(200),
        "answered at once, no challenge"
    );
    let people = h.engine.conference_participants();
    assert_eq!(people.len(), 1);
    assert_eq!(people[0].caller, "+3247555123", "P-Asserted-Identity wins");
    assert_eq!(people[0].caller_name, "Jane Roe");
    assert!(!people[0].is_admin);
    assert_eq!(
        people[0].state, "entering_code",
        "the room's access code is asked"
    );
}

#[test]
fn calls_to_the_registered_contact_are_the_providers_from_any_port() {
    let mut h = with_trunk(TrunkTransport::Udp, true);
    let reg = requests_to(&h.out(), CARRIER, "REGISTER").remove(0);
    let contact = header_of(&reg, "Contact").unwrap();
    let token = contact
        .split("sip:")
        .nth(1)
        .and_then(|r| r.split('@').next())
        .unwrap()
        .to_owned();
    h.send(7001, &carrier_invite(7001, &token, "+3225550100", "in-2"));
    assert_eq!(
        final_status(&h.out(), 7001),
        Some(200),
        "the DID is read from To"
    );
}

#[test]
fn hang_up_not_configured_unknown_numbers_and_strangers_are_turned_away() {
    let mut h = with_trunk(TrunkTransport::Udp, false);
    h.out();
    for (number, want) in [
        ("+3225550102", 603),
        ("+3225550103", 480),
        ("+3225559999", 404),
    ] {
        h.send(
            CARRIER,
            &carrier_invite(CARRIER, number, number, &format!("c{number}")),
        );
        assert_eq!(final_status(&h.out(), CARRIER), Some(want), "{number}");
    }
    // The same INVITE from an address that is not the trunk's must authenticate.
    h.send(
        7100,
        &carrier_invite(7100, "+3225550100", "+3225550100", "stranger"),
    );
    assert_eq!(final_status(&h.out(), 7100), Some(407));
    assert!(h.engine.conference_participants().is_empty());
}

/// The Open commands and the bridge room both legs were mixed into.
fn bridge_media(h: &mut Harness) -> (Vec<LegId>, Vec<MixId>) {
    let cmds = media(h);
    let opened = cmds
        .iter()
        .filter_map(|c| match c {
            MediaCommand::Open { leg, .. } => Some(*leg),
            _ => None,
        })
        .collect();
    let rooms = cmds
        .iter()
        .filter_map(|c| match c {
            MediaCommand::Mix { mix, .. } => Some(*mix),
            _ => None,
        })
        .collect();
    (opened, rooms)
}

#[test]
fn a_number_routed_to_a_user_rings_their_phone_with_media_through_the_pbx() {
    let mut h = with_trunk(TrunkTransport::Udp, false);
    register(&mut h, "bob", 6000);
    h.out();
    h.send(
        CARRIER,
        &carrier_invite(CARRIER, "+3225550101", "+3225550101", "in-3"),
    );
    let out = h.out();
    let invite = requests_to(&out, 6000, "INVITE").remove(0);
    assert!(
        header_of(&invite, "From")
            .unwrap()
            .contains("sip:+3247555123@"),
        "caller ID"
    );
    let offered = sdp_port(&invite.body);
    assert_ne!(
        offered, 40000,
        "the phone is offered the PBX's port, not the carrier's"
    );
    assert_eq!(h.engine.calls().len(), 1);

    h.send(6000, &answer_text(&invite, 180, "desk", 6000));
    assert!(h
        .out()
        .iter()
        .any(|(p, m)| *p == CARRIER && status(m) == Some(180)));
    h.send(6000, &answer_with_sdp(&invite, "desk", 6000, &sdp(30000)));
    let out = h.out();
    assert_eq!(
        requests_to(&out, 6000, "ACK").len(),
        1,
        "the phone's 200 is ACKed"
    );
    let answer = out
        .iter()
        .find(|(p, m)| *p == CARRIER && status(m) == Some(200))
        .map(|(_, m)| response(m).clone())
        .expect("the carrier gets 200");
    let carrier_side = sdp_port(&answer.body);
    assert_ne!(carrier_side, offered, "one port per leg");
    let (opened, rooms) = bridge_media(&mut h);
    assert_eq!(opened.len(), 2);
    assert_eq!(rooms.len(), 2);
    assert!(
        matches!(rooms[0], MixId::Call(_)) && rooms[0] == rooms[1],
        "both legs in one private mix: {rooms:?}"
    );
    assert_eq!(h.engine.calls()[0].state, "answered");

    // The carrier hangs up: the phone gets BYE, the media is closed.
    let tag = answer.to_tag().unwrap();
    h.send(CARRIER, &format!("BYE sip:pbx@127.0.0.1 SIP/2.0\nVia: SIP/2.0/UDP 127.0.0.1:{CARRIER};branch=z9hG4bKbye3\nFrom: <sip:anonymous@carrier.example>;tag=carrier\nTo: <sip:+3225550101@127.0.0.1>;tag={tag}\nCall-ID: in-3\nCSeq: 2 BYE\nContent-Length: 0\n\n"));
    let out = h.out();
    assert_eq!(final_status(&out, CARRIER), Some(200));
    assert_eq!(requests_to(&out, 6000, "BYE").len(), 1);
    let closed = media(&mut h)
        .iter()
        .filter(|c| matches!(c, MediaCommand::Close { .. }))
        .count();
    assert_eq!(closed, 2);
    assert!(h.engine.calls().is_empty());
    assert_eq!(h.engine.rtp_ports_in_use(), 0);
}

#[test]
fn a_user_dials_a_number_through_the_trunk_which_challenges_the_pbx() {
    let mut h = with_trunk(TrunkTransport::Udp, false);
    h.out();
    let out = dial(&mut h, "0475123456");
    let invite = requests_to(&out, CARRIER, "INVITE").remove(0);
    assert_eq!(headers::uri(&invite), "sip:0475123456@127.0.0.1:7000");
    let from = header_of(&invite, "From").unwrap();
    assert!(
        from.contains("sip:+3225550100@") && from.contains("Alice"),
        "{from}"
    );
    assert!(header_of(&invite, "P-Asserted-Identity")
        .unwrap()
        .contains("+3225550100"));
    let offered = sdp_port(&invite.body);
    assert_ne!(offered, 4000, "the carrier never sees the phone's address");

    let proxy = format!("Proxy-Authenticate: {}\n", challenge("carrier"));
    h.send(CARRIER, &reply(&invite, 407, "gw", &proxy, ""));
    let out = h.out();
    let retry = requests_to(&out, CARRIER, "INVITE").remove(0);
    assert_eq!(retry.cseq().unwrap().0, 2);
    assert_eq!(retry.call_id(), invite.call_id());
    let creds = digest::credentials_from(&retry, true).expect("Proxy-Authorization");
    assert!(digest::verify(&creds, "INVITE", TRUNK_PASSWORD));
    assert!(final_status(&out, 5000).is_none(), "the caller still waits");

    h.send(CARRIER, &reply(&retry, 180, "gw", "", ""));
    assert!(h
        .out()
        .iter()
        .any(|(p, m)| *p == 5000 && status(m) == Some(180)));
    let contact = "Contact: <sip:gw@127.0.0.1:7000>\n";
    h.send(CARRIER, &reply(&retry, 200, "gw", contact, &sdp(41000)));
    let out = h.out();
    assert_eq!(requests_to(&out, CARRIER, "ACK").len(), 1);
    let ok = out
        .iter()
        .find(|(p, m)| *p == 5000 && status(m) == Some(200))
        .map(|(_, m)| response(m).clone())
        .expect("Alice's call is answered");
    assert_ne!(sdp_port(&ok.body), offered);
    let (opened, rooms) = bridge_media(&mut h);
    assert_eq!((opened.len(), rooms.len()), (2, 2));

    // Alice hangs up: the carrier gets BYE.
    let tag = ok.to_tag().unwrap();
    h.send(5000, &format!("BYE sip:pbx@127.0.0.1 SIP/2.0\nVia: SIP/2.0/UDP 127.0.0.1:5000;branch=z9hG4bKbye4\nFrom: <sip:alice@127.0.0.1>;tag=caller\nTo: <sip:0475123456@127.0.0.1>;tag={tag}\nCall-ID: call-1\nCSeq: 3 BYE\nContent-Length: 0\n\n"));
    assert_eq!(requests_to(&h.out(), CARRIER, "BYE").len(), 1);
}

#[test]
fn strangers_cannot_reach_the_trunk() {
    let mut h = with_trunk(TrunkTransport::Udp, false);
    h.out();
    h.send(
        7200,
        &invite_text(7200, "0475123456", 1, "z9hG4bKfraud", None),
    );
    let out = h.out();
    assert_eq!(final_status(&out, 7200), Some(407));
    assert!(requests_to(&out, CARRIER, "INVITE").is_empty());
}

#[test]
fn an_invitation_to_a_number_goes_out_with_the_room_as_caller_and_joins_on_answer() {
    let mut h = with_trunk(TrunkTransport::Udp, false);
    h.out();
    let id = h
        .engine
        .invite(h.now, 7, "0475123456", Duration::from_secs(30))
        .unwrap();
    let invite = requests_to(&h.out(), CARRIER, "INVITE").remove(0);
    let from = header_of(&invite, "From").unwrap();
    assert!(
        from.contains("Sales (800)") && from.contains("+3225550100"),
        "{from}"
    );
    h.send(CARRIER, &reply(&invite, 183, "gw", "", ""));
    h.out();
    assert_eq!(
        h.engine.invitation(id).unwrap().state,
        InvitationState::Ringing
    );
    let contact = "Contact: <sip:gw@127.0.0.1:7000>\n";
    h.send(CARRIER, &reply(&invite, 200, "gw", contact, &sdp(42000)));
    assert_eq!(requests_to(&h.out(), CARRIER, "ACK").len(), 1);
    let inv = h.engine.invitation(id).unwrap();
    assert_eq!(inv.state, InvitationState::Answered);
    let people = h.engine.conference_participants();
    assert_eq!(people.len(), 1);
    assert_eq!(people[0].caller, "0475123456");
    // "You are the first participant", then the mix: no access code for the invited.
    assert_eq!(people[0].state, "joining");

    // A session refresh without an offer is answered with the PBX's own description.
    let offered = sdp_port(&invite.body);
    let from = header_of(&invite, "From").unwrap();
    let to = header_of(&invite, "To").unwrap();
    let refresh = format!(
        "INVITE sip:pbx@127.0.0.1 SIP/2.0\nVia: SIP/2.0/UDP 127.0.0.1:{CARRIER};branch=z9hG4bKrefresh\nFrom: {to};tag=gw\nTo: {from}\nCall-ID: {}\nCSeq: 5 INVITE\nContact: <sip:gw@127.0.0.1:7000>\nContent-Length: 0\n\n",
        invite.call_id().unwrap()
    );
    h.send(CARRIER, &refresh);
    let ok = h
        .out()
        .into_iter()
        .find(|(p, m)| *p == CARRIER && status(m) == Some(200))
        .map(|(_, m)| response(&m).clone())
        .expect("the refresh is answered");
    assert_eq!(sdp_port(&ok.body), offered);
}

#[test]
fn an_unreachable_tcp_trunk_fails_an_invitation_at_once() {
    let mut h = with_trunk(TrunkTransport::Tcp, false);
    h.out();
    let id = h
        .engine
        .invite(h.now, 7, "0475123456", Duration::from_secs(30))
        .unwrap();
    let invites = requests_to(&h.out(), CARRIER, "INVITE");
    assert_eq!(invites.len(), 1);
    h.engine.handle_unreachable(
        h.now,
        Peer {
            transport: Transport::Tcp,
            addr: SocketAddr::from(([127, 0, 0, 1], CARRIER)),
            conn: None,
        },
        "cannot connect to 127.0.0.1:7000: Connection refused",
    );
    let inv = h.engine.invitation(id).unwrap();
    assert_eq!(inv.state, InvitationState::Failed);
    assert_eq!(inv.status, Some(503));
    assert!(inv.reason.unwrap().contains("Connection refused"));
    assert_eq!(h.engine.rtp_ports_in_use(), 0);
}

mod headers {
    use confero_sip::message::Request;

    pub(crate) fn uri(req: &Request) -> String {
        use confero_sip::ezk_sip_types::print::AppendCtx;
        req.uri.default_print_ctx().to_string()
    }
}
