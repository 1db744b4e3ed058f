//! The media thread: the IO shell of one media [`Bridge`].
//!
//! One dedicated OS thread (never the async runtime) binds the UDP ports the engine picked
//! for each leg, and drives the bridge — which holds every piece of media policy — with
//! what happens on them:
//! 1. the engine's commands, after binding (or, on failure, reporting) the ports they name;
//! 2. every datagram waiting on a leg's ports, up to a bound per port;
//! 3. the tick, when it is due;
//! 4. then sends what the bridge transmits from the port it names, and hands its events to
//!    the engine.
//!
//! Nothing here blocks but the sleep until the next tick: sockets are non-blocking and
//! events go to the engine through an unbounded channel.

use std::io::ErrorKind;
use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, TryRecvError};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use confero_media::bridge::{
    Bridge, BridgeConfig, ClockStats, LegId, MediaCommand, MediaEvent, PromptError, PromptLibrary,
};
use confero_media::idmap::IdMap;
use tokio::sync::mpsc::UnboundedSender;

/// Datagrams read per socket per drive: a phone sends one per tick; a flood must not stall
/// the tick (the rest waits in the socket buffer, or is dropped by the kernel).
const MAX_READS_PER_TICK: usize = 32;

/// The prompts, each replaced by a file of the same name in `override_dir` if there is one
/// (so an administrator can record their own).
pub(crate) fn load_prompts(override_dir: &Path) -> Result<PromptLibrary, PromptError> {
    PromptLibrary::load(|name| {
        let path = override_dir.join(name);
        let bytes = std::fs::read(&path).ok()?;
        tracing::info!(path = %path.display(), "using the administrator's prompt");
        Some(bytes)
    })
}

/// How the media thread keeps time, for /metrics: written by the thread after each drive
/// of its bridge, read by scrapes.
#[derive(Debug, Default)]
pub(crate) struct MediaClock {
    ticks: AtomicU64,
    overruns: AtomicU64,
    skipped_ticks: AtomicU64,
}

impl MediaClock {
    fn record(&self, s: ClockStats) {
        self.ticks.store(s.ticks, Ordering::Relaxed);
        self.overruns.store(s.overruns, Ordering::Relaxed);
        self.skipped_ticks.store(s.skipped_ticks, Ordering::Relaxed);
    }

    /// What the bridge reported last.
    pub(crate) fn stats(&self) -> ClockStats {
        ClockStats {
            ticks: self.ticks.load(Ordering::Relaxed),
            overruns: self.overruns.load(Ordering::Relaxed),
            skipped_ticks: self.skipped_ticks.load(Ordering::Relaxed),
        }
    }
}

pub(crate) struct MediaShell {
    pub(crate) bind_ip: IpAddr,
    /// The address browsers are told to send to (our one ICE candidate).
    pub(crate) public_ip: IpAddr,
    pub(crate) prompts: Arc<PromptLibrary>,
    pub(crate) commands: Receiver<MediaCommand>,
    pub(crate) events: UnboundedSender<MediaEvent>,
    pub(crate) shutdown: Arc<AtomicBool>,
    /// `--rtp-timeout`.
    pub(crate) rtp_timeout: Duration,
    /// Where the thread reports how it keeps time.
    pub(crate) clock: Arc<MediaClock>,
}

/// The bound ports, and which leg holds which.
#[derive(Default)]
struct Sockets {
    by_port: IdMap<u16, UdpSocket>,
    of_leg: IdMap<LegId, Vec<u16>>,
}

impl Sockets {
    /// Binds `ports` for `leg` (all or none).
    fn bind(&mut self, ip: IpAddr, leg: LegId, ports: &[u16]) -> std::io::Result<()> {
        let mut bound = Vec::with_capacity(ports.len());
        for &port in ports {
            let socket = UdpSocket::bind(SocketAddr::new(ip, port))?;
            socket.set_nonblocking(true)?;
            bound.push((port, socket));
        }
        for (port, socket) in bound {
            self.by_port.insert(port, socket);
        }
        self.of_leg.entry(leg).or_default().extend_from_slice(ports);
        Ok(())
    }

    fn release(&mut self, leg: LegId) {
        for port in self.of_leg.remove(&leg).unwrap_or_default() {
            self.by_port.remove(&port);
        }
    }
}

impl MediaShell {
    /// Runs until shutdown, or until the engine is gone. Call on a dedicated thread.
    pub(crate) fn run(self) {
        let unix = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default();
        let mut bridge = Bridge::new(
            BridgeConfig {
                public_ip: self.public_ip,
                rtp_timeout: self.rtp_timeout,
                seed: rand::random(),
            },
            self.prompts.clone(),
            Instant::now(),
            unix,
        );
        let mut sockets = Sockets::default();
        let mut buf = vec![0u8; 2048];
        while !self.shutdown.load(Ordering::Relaxed) {
            let wake = bridge.poll_timeout();
            let now = Instant::now();
            if now < wake {
                std::thread::sleep(wake - now);
            }
            let now = Instant::now();
            loop {
                match self.commands.try_recv() {
                    Ok(cmd) => self.command(now, cmd, &mut bridge, &mut sockets),
                    Err(TryRecvError::Empty) => break,
                    Err(TryRecvError::Disconnected) => return,
                }
            }
            for (&port, socket) in &sockets.by_port {
                for _ in 0..MAX_READS_PER_TICK {
                    match socket.recv_from(&mut buf) {
                        Ok((n, from)) => bridge.handle_datagram(now, port, from, &buf[..n]),
                        Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                        Err(e) if e.kind() == ErrorKind::ConnectionRefused => continue,
                        Err(err) => {
                            tracing::debug!(port, %err, "RTP receive error");
                            break;
                        }
                    }
                }
            }
            bridge.handle_timeout(now);
            self.clock.record(bridge.clock_stats());
            while let Some(t) = bridge.poll_transmit() {
                if let Some(socket) = sockets.by_port.get(&t.from_port) {
                    let _ = socket.send_to(t.data, t.to);
                }
            }
            while let Some(ev) = bridge.poll_event() {
                let _ = self.events.send(ev);
            }
        }
    }

    /// Binds what a command opens (the bridge never sees a leg whose ports could not be
    /// bound: the engine hears of it at once) and frees what it closes.
    fn command(&self, now: Instant, cmd: MediaCommand, bridge: &mut Bridge, sockets: &mut Sockets) {
        let (leg, ports) = match &cmd {
            MediaCommand::Open {
                leg,
                port,
                rtcp_mux: false,
                ..
            } => (*leg, vec![*port, port.wrapping_add(1)]),
            MediaCommand::Open { leg, port, .. }
            | MediaCommand::OpenWebRtc { leg, port, .. }
            | MediaCommand::OfferWebRtc { leg, port } => (*leg, vec![*port]),
            MediaCommand::Close { leg } => {
                sockets.release(*leg);
                return bridge.handle_command(now, cmd);
            }
            _ => return bridge.handle_command(now, cmd),
        };
        match sockets.bind(self.bind_ip, leg, &ports) {
            Ok(()) => bridge.handle_command(now, cmd),
            Err(err) => {
                let _ = self.events.send(MediaEvent::Failed {
                    leg,
                    reason: format!("cannot bind RTP port {}: {err}", ports[0]),
                });
            }
        }
    }
}
