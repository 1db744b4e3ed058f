//! Confero's media plane, sans-IO: codecs, RTP/RTCP, jitter buffering, DTMF and resampling
//! for one call leg, and the room mixer that combines legs.
//!
//! Nothing here opens a socket, spawns a thread or reads the clock: the server's media
//! thread owns those and passes every datagram and every `now` in.

#![forbid(unsafe_code)]

pub mod codec;
pub mod dtmf;
pub mod jitter;
pub mod resample;
pub mod rtp;
pub mod stream;
pub mod tone;
pub mod mixer;
