//! Feeds arbitrary datagrams to the overload path, which reads requests without the
//! parser and answers from their raw bytes. Nothing may panic, and what it writes must be
//! a response our parser reads.
#![no_main]

use confero_sip::message::Message;
use confero_sip::peek::Peek;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Some(peek) = Peek::of(data) {
        let out = peek.refusal(503, "Service Unavailable", "t", "Retry-After: 5\r\n");
        if Message::parse(data).is_ok() {
            assert!(
                matches!(Message::parse(&out), Ok(Message::Response(_))),
                "refusal of a valid request does not parse: {:?}",
                String::from_utf8_lossy(&out)
            );
        }
    }
});
