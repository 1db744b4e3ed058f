//! Feeds arbitrary bytes to everything a stranger on the network reaches first: the
//! message parser (as one datagram) and the stream framer (as TCP input cut at an
//! input-chosen point). Neither may panic; whatever parses must survive a print/parse
//! round trip, and every ready-made 400 must itself be a message we can print.
#![no_main]

use confero_sip::message::Message;
use confero_sip::transport::{Frame, StreamFramer};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    match Message::parse(data) {
        Ok(msg) => {
            let printed = msg.to_bytes();
            assert!(Message::parse(&printed).is_ok(), "reprint rejected");
        }
        Err(err) => {
            if let Some(resp) = err.bad_request_response() {
                let _ = resp.to_bytes();
            }
        }
    }

    let cut = data.first().map_or(0, |b| usize::from(*b)).min(data.len());
    let (a, b) = data.split_at(cut);
    let mut framer = StreamFramer::new();
    for chunk in [a, b] {
        framer.push(chunk);
        while let Some(frame) = framer.next_frame() {
            match frame {
                Ok(Frame::Message(bytes)) => {
                    let _ = Message::parse(&bytes);
                }
                Ok(Frame::KeepAlive) => {}
                Err(_) => break,
            }
        }
    }
});
