//! The HTTP side's shared pieces: request authentication helpers and the sign-in
//! throttle (used by both the REST API and the console), and `/ws`, where browsers'
//! SIP over WebSocket enters the SIP shell.

pub(crate) mod auth;
pub(crate) mod throttle;
pub(crate) mod ws;
