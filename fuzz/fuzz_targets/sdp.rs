//! Feeds arbitrary bytes to the SDP reader, as the body of an INVITE from a stranger. It
//! may not panic; an offer it accepts must give an answer that it reads back to the same
//! agreement, and every error must know its status code.
#![no_main]

use confero_sip::sdp::{self, LocalMedia};
use libfuzzer_sys::fuzz_target;

const PREFS: &[&str] = &["G722/8000", "PCMU/8000", "PCMA/8000", "opus/48000/2"];

fuzz_target!(|data: &[u8]| {
    let offer = match sdp::parse_audio(data) {
        Ok(offer) => offer,
        Err(err) => {
            let _ = (err.status_code(), err.warning());
            return;
        }
    };
    let local = LocalMedia {
        addr: if offer.addr.is_ipv4() {
            "192.0.2.1".parse().unwrap()
        } else {
            "2001:db8::1".parse().unwrap()
        },
        port: 20000,
        session_id: 1,
        session_version: 1,
        username: "confero".into(),
    };
    let _ = sdp::negotiated_from_answer(&offer, PREFS);
    if let Ok((answer, ours)) = sdp::answer(&offer, &local, PREFS) {
        let back = sdp::parse_audio(answer.as_bytes()).expect("our answer must parse");
        let codec = format!("{}/{}", ours.codec.encoding, ours.codec.clock_rate);
        let theirs = sdp::negotiated_from_answer(&back, &[codec.as_str()])
            .expect("our answer must be usable");
        assert_eq!(theirs.codec.payload_type, ours.codec.payload_type);
        assert_eq!(theirs.telephone_event, ours.telephone_event);
        assert_eq!(theirs.direction, ours.direction.reversed());
    }
});
