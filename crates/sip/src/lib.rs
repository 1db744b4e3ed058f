//! Confero's SIP core: messages, stream framing, RFC 3261 transactions and digest
//! authentication, as sans-IO state machines.
//!
//! Nothing in this crate opens a socket, spawns a thread or reads the clock. The IO shell
//! owns those and feeds this crate bytes and instants; the crate answers with bytes to send,
//! events for the transaction user (TU: dialogs, registrar, call logic) and the instant it
//! next wants to be woken. That keeps every protocol decision testable on a virtual clock.
//!
//! # Modules
//! - [`message`]: parse one whole message ([`Message::parse`](message::Message::parse)),
//!   serialise it, build responses ([`response_for`](message::response_for)).
//! - [`transport`]: peers, [`Transmit`](transport::Transmit), and the
//!   [`StreamFramer`](transport::StreamFramer) that cuts TCP/TLS streams into messages.
//! - [`transaction`]: the [`TransactionLayer`](transaction::TransactionLayer) (RFC 3261 §17).
//! - [`digest`]: Digest authentication, server and client side.
//! - [`peek`]: a look at a request without parsing it, to refuse load cheaply.
//! - [`sdp`]: SDP offer/answer for the audio stream ([`parse_audio`](sdp::parse_audio),
//!   [`answer`](sdp::answer), [`offer`](sdp::offer)).
//!
//! # The run loop
//! ```text
//! on datagram / WebSocket message (bytes, peer):
//!     Message::parse(bytes) → Ok(msg)  → layer.handle_message(now, msg, peer)
//!                           → Err(e)   → if let Some(r) = e.bad_request_response()
//!                                           { send r.to_bytes() to peer }
//! on stream bytes (conn):
//!     framer.push(bytes); while let Some(f) = framer.next_frame():
//!         Ok(Frame::Message(b)) → as above;  Ok(Frame::KeepAlive) → write "\r\n"
//!         Err(_) → close the connection (and layer.handle_transport_error(peer))
//! on timer expiry:
//!     layer.handle_timeout(now)
//! after every handle_* call, drain, in this order, until all are empty:
//!     1. poll_transmit() → send each Transmit to its peer
//!     2. poll_event()    → give each event to the TU; the TU may call send_request,
//!                          send_response, send_stateless (which queue more transmits,
//!                          so go back to 1)
//!     3. poll_timeout()  → re-arm the single timer at that instant (None: disarm)
//! ```
//! Transmits are drained before events so that what the layer already decided (an ACK for a
//! non-2xx, a retransmitted response) leaves before the TU reacts; `poll_timeout` comes last
//! because the TU's calls change it. Every `now` passed in must be monotonic; timers that
//! are overdue fire on the next `handle_timeout`, once.
//!
//! # Panics and errors
//! No input from the network makes this crate panic: an error means bad input (and says
//! which status code answers it), a panic would be a bug. The parsers are fuzzed
//! (`fuzz/fuzz_targets/sip_message.rs`).

#![warn(missing_docs)]

pub use ezk_sip_types;
pub use ezk_sip_types::uri::SipUri;
pub use ezk_sip_types::{Headers, Method, Name, StatusCode};

pub mod dialog;
pub mod digest;
pub mod headers;
pub mod message;
pub mod peek;
pub mod sdp;
pub mod transaction;
pub mod transport;
