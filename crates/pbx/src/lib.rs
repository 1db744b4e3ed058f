//! Confero's PBX logic, sans-IO: the configuration model and its validation, the
//! registrar (location service) and the signalling engine that connects calls.
//!
//! Nothing here opens a socket, spawns a thread or reads the clock: the IO shell in
//! `confero-server` feeds messages and time in and sends what comes out (see [`engine`]).

pub mod auth;
pub mod config;
pub mod engine;
pub mod guard;
mod headers;
pub mod ports;
pub mod registrar;
pub mod room;
