//! The IO shell: the sockets, threads and clocks the sans-IO cores must not own.
//!
//! - [`sip`]: the task that owns the signalling engine (UDP, TCP accept, timers,
//!   configuration revisions, live views, persistence);
//! - [`conns`]: stream connections (TCP, TLS, and WebSocket from `crate::http::ws`) and
//!   their reader and writer tasks;
//! - [`media`]: the media threads, each around one media bridge;
//! - [`stamped`]: datagrams with the time the kernel received them.

pub(crate) mod conns;
pub(crate) mod media;
pub(crate) mod sip;
pub(crate) mod stamped;

pub(crate) use conns::ConnTable;
