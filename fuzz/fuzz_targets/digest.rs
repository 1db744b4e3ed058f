//! Feeds arbitrary header values to the digest readers: an `Authorization` a stranger
//! sends us (read, checked against a password, offered for replay) and a challenge a
//! provider sends our trunks (answered). Nothing may panic; an answer we write must read
//! back as credentials that verify.
#![no_main]

use std::time::Duration;

use confero_sip::digest::{self, NonceCounts};
use confero_sip::message::Message;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(value) = std::str::from_utf8(data) else {
        return;
    };
    if value.contains(['\r', '\n']) {
        return;
    }
    let text = format!(
        "REGISTER sip:pbx SIP/2.0\r\nVia: SIP/2.0/UDP 10.0.0.1;branch=z9hG4bKf\r\n\
         From: <sip:a@pbx>;tag=1\r\nTo: <sip:a@pbx>\r\nCall-ID: f\r\nCSeq: 1 REGISTER\r\n\
         Authorization: {value}\r\nProxy-Authorization: {value}\r\nContent-Length: 0\r\n\r\n"
    );
    if let Ok(Message::Request(req)) = Message::parse(text.as_bytes()) {
        for proxy in [false, true] {
            if let Some(creds) = digest::credentials_from(&req, proxy) {
                let _ = digest::verify(&creds, "REGISTER", "secret");
                let mut counts = NonceCounts::new(1_700_000_000, Duration::from_secs(120), 4);
                let _ = counts.admit(&creds, 1_700_000_010);
            }
        }
    }
    if let Ok(answer) = digest::answer_challenge(value, "REGISTER", "sip:pbx", "u", "p", 1, "c") {
        let reply = format!(
            "REGISTER sip:pbx SIP/2.0\r\nVia: SIP/2.0/UDP 10.0.0.1;branch=z9hG4bKg\r\n\
             From: <sip:u@pbx>;tag=1\r\nTo: <sip:u@pbx>\r\nCall-ID: g\r\nCSeq: 2 REGISTER\r\n\
             Authorization: {answer}\r\nContent-Length: 0\r\n\r\n"
        );
        if let Ok(Message::Request(req)) = Message::parse(reply.as_bytes()) {
            if let Some(creds) = digest::credentials_from(&req, false) {
                assert!(
                    digest::verify(&creds, "REGISTER", "p"),
                    "our answer does not verify: {answer}"
                );
            }
        }
    }
});
