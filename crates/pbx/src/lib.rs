//! Confero's PBX logic, sans-IO: the configuration model and its validation, the
//! registrar, conference rooms and the signalling engine that connects calls.
//!
//! Nothing here opens a socket, spawns a thread or reads the clock: the IO shell in
//! `confero-server` feeds messages and time in and sends what comes out.
//!
//! # Modules
//! - [`config`]: what an administrator configures (users, rooms, numbers, trunks), its
//!   validation, and the [`Snapshot`](config::Snapshot) of one production revision.
//! - [`engine`]: the signalling engine, a back-to-back user agent over the transaction
//!   layer of `confero-sip`; it steers the media bridge of `confero-media` with
//!   [`MediaCommand`](engine::MediaCommand)s.
//! - [`registrar`]: where a REGISTER goes: authentication, the REGISTER itself, bindings.
//! - [`room`]: each conference room's state machine (receptionist, access code, waiting for
//!   the administrator, mix).
//! - [`guard`]: a generic limiter of failures (password and access-code guessing).
//! - [`ports`]: the RTP port pool.
//!
//! # The run loop
//! ```text
//! on a datagram or framed stream message:  engine.handle_datagram(now, bytes, peer)
//! on a media event (digit, playback done):  engine.handle_media_event(now, event)
//! on a new production revision:            engine.set_config(now, snapshot)
//! at engine.poll_timeout():                engine.handle_timeout(now)
//! after each, drain until empty:
//!     engine.poll_media()     → the media bridge (before transmits: a 200 OK's media
//!                               must be open when the phone's first RTP arrives)
//!     engine.poll_transmit()  → the network
//!     engine.poll_event()     → bindings to persist, live views to refresh
//! ```
//!
//! # Invariants
//! - Time only moves forward and only through the `now` passed in; Unix times are derived
//!   from the instant and the Unix time given at creation.
//! - Every port taken from the pool is returned when its leg ends; every leg opened in the
//!   bridge is closed exactly once.
//! - Every map entry that points at a call, a leg or an invitation (dialogs, client
//!   transactions, timers) goes when its owner goes.
//! - A configuration change never ends a call in progress, except a room deleted by it,
//!   whose participants hear that it closed.

#![warn(missing_docs)]

pub mod config;
pub mod engine;
pub mod guard;
pub mod ports;
pub mod registrar;
pub mod room;
