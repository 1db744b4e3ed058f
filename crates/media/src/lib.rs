//! Confero's media plane, sans-IO: codecs, RTP/RTCP, jitter buffering, DTMF and resampling
//! for one call leg, and the room mixer that combines legs.
//!
//! Nothing here opens a socket, spawns a thread or reads the clock: the server's media
//! thread owns those and passes every datagram and every `now` in. That keeps every path
//! testable on a virtual clock with a seeded simulated network, which is how the tests
//! beside each module drive it.
//!
//! # One leg's pipeline ([`stream::MediaStream`])
//!
//! Receiving, as each datagram arrives ([`stream::MediaStream::handle_packet`]):
//!
//! 1. **Demultiplex** RTP from RTCP by the second byte (RFC 5761, [`rtp::is_rtcp`]).
//! 2. **Parse** ([`rtp::parse_rtp`]); malformed packets are counted and dropped.
//! 3. **Source check**: the first valid packet latches the sender's address (symmetric RTP
//!    through NAT) and its SSRC; packets from elsewhere are ignored until the latched
//!    source has been silent for a second.
//! 4. **Telephone-events** (RFC 4733) go to the [`dtmf::EventReceiver`], which reports each
//!    digit once; **audio** goes to the [`jitter::JitterBuffer`].
//!
//! Then once per 20 ms tick of the room's clock ([`stream::MediaStream::pull_frame`]):
//!
//! 5. The jitter buffer yields the frame due now, a gap, or nothing (stream idle); its
//!    delay follows the measured jitter.
//! 6. The [`codec::Decoder`] decodes the frame, or conceals the gap from the last good
//!    audio (pitch repetition fading to silence).
//! 7. Optionally the [`dtmf::InbandDetector`] listens for DTMF tones in the decoded frame.
//!    The 20 ms PCM frame goes to the mixer, at 8 kHz for G.711 or 16 kHz for G.722;
//!    [`resample`] converts between the two.
//!
//! Sending, once per tick: the mixer's PCM is encoded with a [`codec::Encoder`] (shared by all
//! listeners of the same mix), [`stream::MediaStream::packetize`] adds the RTP header, and
//! [`stream::MediaStream::poll_rtcp`] writes a sender or receiver report about every five
//! seconds, from which both ends learn loss, jitter and round-trip time.
//!
//! # Conventions
//!
//! - Every parser reads data from strangers: errors are values, never panics.
//! - Outputs are appended to caller-owned `Vec`s and internal buffers are reused, so once
//!   buffers have grown to a frame nothing allocates per packet.
//! - Frames are 20 ms everywhere ([`codec::FRAME_MS`]).

#![warn(missing_docs)]
#![forbid(unsafe_code)]

pub mod bridge;
pub mod codec;
pub mod dtmf;
pub mod idmap;
pub mod jitter;
pub mod mixer;
pub mod placement;
pub mod resample;
pub mod rtp;
pub mod stream;
pub mod tone;
pub mod webrtc;
