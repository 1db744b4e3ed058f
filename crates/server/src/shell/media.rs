//! The media threads: the IO shells of the media [`Bridge`]s, one per thread.
//!
//! `--media-threads` dedicated OS threads (never the async runtime), each with its own
//! bridge, clock and sockets. [`MediaThreads`], on the engine's task, hands each of the
//! engine's commands to the thread its [`Placement`] names — a room, and an anchored call's
//! private mix, live wholly on one thread; a new one goes to the least-loaded — and carries
//! out the rare move of a leg from one thread to another (a transfer into a room elsewhere):
//! the leg's sockets and state travel between the two threads, and its commands wait on the
//! new thread until it has arrived.
//!
//! Each thread binds the UDP ports the engine picked for its legs and drives its bridge —
//! which holds every piece of media policy — with what happens on them:
//! 1. the engine's commands, after binding (or, on failure, reporting) the ports they name;
//! 2. every datagram waiting on a leg's ports, up to a bound per port;
//! 3. the tick, when it is due;
//! 4. then sends what the bridge transmits from the port it names, and hands its events to
//!    the engine.
//!
//! Nothing here blocks but the sleep until the next tick: sockets are non-blocking and
//! events go to the engine through an unbounded channel. One thread falling behind delays
//! no other: they share nothing but that channel.

use std::io::ErrorKind;
use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, Sender, TryRecvError};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use confero_media::bridge::{
    Bridge, BridgeConfig, ClockStats, LegId, MediaCommand, MediaEvent, MovingLeg, PromptError,
    PromptLibrary,
};
use confero_media::idmap::IdMap;
use confero_media::placement::{Placement, Routed};
use confero_pbx::ports::PortReserver;
use rustix::buffer::spare_capacity;
use rustix::event::{epoll, Timespec};
use rustix::fd::OwnedFd;
use tokio::sync::mpsc::UnboundedSender;

use super::stamped;

/// Datagrams read per socket per drive: a phone sends one per tick; a flood must not stall
/// the tick (the rest waits in the socket buffer, or is dropped by the kernel). Each round
/// reads one datagram from every socket that has one.
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

/// How one media thread keeps time and how busy it is, for /metrics: written by the
/// thread after each drive of its bridge, read by scrapes.
#[derive(Debug, Default)]
pub(crate) struct MediaClock {
    ticks: AtomicU64,
    overruns: AtomicU64,
    skipped_ticks: AtomicU64,
    /// Time spent working (not sleeping), in nanoseconds.
    busy_nanos: AtomicU64,
    legs: AtomicU64,
    mixes: AtomicU64,
}

/// What a [`MediaClock`] says.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct MediaThreadStats {
    pub(crate) clock: ClockStats,
    pub(crate) busy: Duration,
    pub(crate) legs: u64,
    pub(crate) mixes: u64,
}

impl MediaClock {
    fn record(&self, bridge: &Bridge, busy: Duration) {
        let s = bridge.clock_stats();
        self.ticks.store(s.ticks, Ordering::Relaxed);
        self.overruns.store(s.overruns, Ordering::Relaxed);
        self.skipped_ticks.store(s.skipped_ticks, Ordering::Relaxed);
        let nanos = u64::try_from(busy.as_nanos()).unwrap_or(u64::MAX);
        self.busy_nanos.fetch_add(nanos, Ordering::Relaxed);
        self.legs
            .store(bridge.leg_count() as u64, Ordering::Relaxed);
        self.mixes
            .store(bridge.mix_count() as u64, Ordering::Relaxed);
    }

    /// What the thread reported last.
    pub(crate) fn stats(&self) -> MediaThreadStats {
        MediaThreadStats {
            clock: ClockStats {
                ticks: self.ticks.load(Ordering::Relaxed),
                overruns: self.overruns.load(Ordering::Relaxed),
                skipped_ticks: self.skipped_ticks.load(Ordering::Relaxed),
            },
            busy: Duration::from_nanos(self.busy_nanos.load(Ordering::Relaxed)),
            legs: self.legs.load(Ordering::Relaxed),
            mixes: self.mixes.load(Ordering::Relaxed),
        }
    }
}

/// What a media thread is told.
enum ThreadInput {
    /// One of the engine's commands.
    Command(MediaCommand),
    /// A leg is on its way from another thread: its commands wait until it has arrived.
    Expect(LegId),
    /// Give the leg up to thread `to`.
    Export { leg: LegId, to: usize },
    /// A leg another thread gave up, with its sockets (nothing if it had never opened).
    Import {
        leg: LegId,
        moving: Option<MovingLeg>,
        sockets: Vec<(u16, UdpSocket)>,
    },
}

/// RTP pairs bound when the engine hands them out, until the media thread that opens the
/// leg takes them: the port an SDP names is ours from the start (another program cannot
/// take it in between), and it is bound once.
#[derive(Debug)]
pub(crate) struct RtpReservations {
    ip: IpAddr,
    held: Mutex<IdMap<u16, [UdpSocket; 2]>>,
}

impl RtpReservations {
    /// Reservations of ports on `ip`.
    pub(crate) fn new(ip: IpAddr) -> RtpReservations {
        RtpReservations {
            ip,
            held: Mutex::default(),
        }
    }

    fn held(&self) -> std::sync::MutexGuard<'_, IdMap<u16, [UdpSocket; 2]>> {
        self.held.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The pair held for `port` (RTP, then RTCP), if it still is.
    fn take(&self, port: u16) -> Option<[UdpSocket; 2]> {
        self.held().remove(&port)
    }
}

impl PortReserver for RtpReservations {
    fn reserve(&self, port: u16) -> bool {
        let bind = |p: u16| UdpSocket::bind(SocketAddr::new(self.ip, p));
        match (bind(port), bind(port.wrapping_add(1))) {
            (Ok(rtp), Ok(rtcp)) => {
                self.held().insert(port, [rtp, rtcp]);
                true
            }
            _ => false,
        }
    }

    fn release(&self, port: u16) {
        self.held().remove(&port);
    }
}

/// What every media thread is started with.
#[derive(Clone)]
pub(crate) struct MediaSettings {
    /// Where the legs' ports are held until they open (and the address they are on).
    pub(crate) reservations: Arc<RtpReservations>,
    /// The address browsers are told to send to (our one ICE candidate).
    pub(crate) public_ip: IpAddr,
    pub(crate) prompts: Arc<PromptLibrary>,
    /// `--rtp-timeout`.
    pub(crate) rtp_timeout: Duration,
}

/// The engine's side of the media threads: places and routes its commands.
pub(crate) struct MediaThreads {
    placement: Placement,
    inputs: Vec<Sender<ThreadInput>>,
}

/// The media threads themselves, to be stopped once the engine is done with them.
pub(crate) struct MediaJoin {
    handles: Vec<std::thread::JoinHandle<()>>,
    shutdown: Arc<AtomicBool>,
}

impl MediaJoin {
    /// Stops every thread and waits for it.
    pub(crate) fn stop(self) {
        self.shutdown.store(true, Ordering::Relaxed);
        for handle in self.handles {
            let _ = handle.join();
        }
    }
}

impl MediaThreads {
    /// Starts `n` media threads (at least one), each reporting through its own clock in
    /// the order returned; their events go to `events`.
    pub(crate) fn start(
        n: usize,
        settings: &MediaSettings,
        events: UnboundedSender<MediaEvent>,
    ) -> std::io::Result<(MediaThreads, MediaJoin, Vec<Arc<MediaClock>>)> {
        let n = n.max(1);
        let shutdown = Arc::new(AtomicBool::new(false));
        let (inputs, receivers): (Vec<_>, Vec<_>) =
            (0..n).map(|_| std::sync::mpsc::channel()).unzip();
        let mut clocks = Vec::with_capacity(n);
        let mut handles = Vec::with_capacity(n);
        for (index, commands) in receivers.into_iter().enumerate() {
            let clock = Arc::new(MediaClock::default());
            clocks.push(clock.clone());
            let shell = MediaShell {
                index,
                settings: settings.clone(),
                commands,
                peers: inputs.clone(),
                events: events.clone(),
                shutdown: shutdown.clone(),
                clock,
                awaiting: IdMap::default(),
            };
            handles.push(
                std::thread::Builder::new()
                    .name(format!("confero-media-{index}"))
                    .spawn(move || shell.run())?,
            );
        }
        let threads = MediaThreads {
            placement: Placement::new(n),
            inputs,
        };
        Ok((threads, MediaJoin { handles, shutdown }, clocks))
    }

    /// Hands one of the engine's commands to the thread of its leg or mix.
    pub(crate) fn send(&mut self, cmd: MediaCommand) {
        let inputs = &self.inputs;
        let mut gone = false;
        let mut tell = |thread: usize, input: ThreadInput| {
            gone |= inputs[thread].send(input).is_err();
        };
        self.placement.route(cmd, &mut |routed| match routed {
            Routed::To(thread, cmd) => tell(thread, ThreadInput::Command(cmd)),
            Routed::Move { leg, from, to } => {
                // Told before the leg can leave, so that it never arrives unexpected.
                tell(to, ThreadInput::Expect(leg));
                tell(from, ThreadInput::Export { leg, to });
            }
        });
        if gone {
            tracing::error!("a media thread is gone");
        }
    }
}

/// One media thread.
struct MediaShell {
    index: usize,
    settings: MediaSettings,
    commands: Receiver<ThreadInput>,
    /// Every thread's input (this one's included), for handing legs over.
    peers: Vec<Sender<ThreadInput>>,
    events: UnboundedSender<MediaEvent>,
    shutdown: Arc<AtomicBool>,
    /// Where the thread reports how it keeps time.
    clock: Arc<MediaClock>,
    /// Legs on their way here, with the commands that came for them meanwhile.
    /// (Commands, and an order to move on again if it came before the leg did.)
    awaiting: IdMap<LegId, Vec<ThreadInput>>,
}

/// The bound ports, which leg holds which, and an epoll instance that has every socket, so
/// that a tick reads only the sockets that have something (a leg's RTCP socket has a
/// datagram every few seconds, and no socket should cost a read that finds nothing).
struct Sockets {
    by_port: IdMap<u16, UdpSocket>,
    of_leg: IdMap<LegId, Vec<u16>>,
    epoll: OwnedFd,
    ready: Vec<epoll::Event>,
    /// Room for a receive time's control message.
    cmsg: Vec<u8>,
}

/// Sockets found ready per `epoll_wait`; more wait for the next call.
const READY_BATCH: usize = 1024;

impl Sockets {
    fn new() -> std::io::Result<Sockets> {
        Ok(Sockets {
            by_port: IdMap::default(),
            of_leg: IdMap::default(),
            epoll: epoll::create(epoll::CreateFlags::CLOEXEC)?,
            ready: Vec::with_capacity(READY_BATCH),
            cmsg: stamped::cmsg_buffer(),
        })
    }

    /// Reads what waits on the sockets into `bridge`: each ready socket once per round,
    /// rounds until none is ready (level-triggered: a socket with more datagrams is ready
    /// again), at most [`MAX_READS_PER_TICK`] rounds so that a flood cannot stall the tick.
    fn read_into(&mut self, bridge: &mut Bridge, buf: &mut [u8]) {
        let zero = Timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        for _ in 0..MAX_READS_PER_TICK {
            self.ready.clear();
            if let Err(err) = epoll::wait(&self.epoll, spare_capacity(&mut self.ready), Some(&zero))
            {
                tracing::warn!(%err, "epoll_wait failed on the media thread");
                return;
            }
            if self.ready.is_empty() {
                return;
            }
            // Read after the wait: every datagram of this round arrived before it.
            let clock = stamped::ArrivalClock::now();
            for ev in &self.ready {
                let port = ev.data.u64() as u16;
                let Some(socket) = self.by_port.get(&port) else {
                    continue;
                };
                match stamped::recv_timestamped(socket, buf, &mut self.cmsg) {
                    Ok((n, from, at)) => {
                        bridge.handle_datagram(clock.arrival(at), port, from, &buf[..n]);
                    }
                    // Nothing after all, or an ICMP error the read has now cleared.
                    Err(e)
                        if matches!(
                            e.kind(),
                            ErrorKind::WouldBlock | ErrorKind::ConnectionRefused
                        ) => {}
                    Err(err) => tracing::debug!(port, %err, "RTP receive error"),
                }
            }
        }
    }

    /// Binds `ports` for `leg` (all or none), taking the pair held for them if there is
    /// one (a leg that needs no RTCP port lets its reserved one go).
    fn bind(
        &mut self,
        reserved: &RtpReservations,
        leg: LegId,
        ports: &[u16],
    ) -> std::io::Result<()> {
        let mut held = ports
            .first()
            .and_then(|&port| reserved.take(port))
            .into_iter()
            .flatten();
        let mut bound = Vec::with_capacity(ports.len());
        for &port in ports {
            let socket = match held.next() {
                Some(socket) => socket,
                None => UdpSocket::bind(SocketAddr::new(reserved.ip, port))?,
            };
            socket.set_nonblocking(true)?;
            if let Err(err) = stamped::enable(&socket) {
                // Its datagrams are then timed when read, as a tick's.
                tracing::debug!(port, %err, "no receive times on an RTP socket");
            }
            bound.push((port, socket));
        }
        self.adopt(leg, bound);
        Ok(())
    }

    fn adopt(&mut self, leg: LegId, sockets: Vec<(u16, UdpSocket)>) {
        let ports = self.of_leg.entry(leg).or_default();
        for (port, socket) in sockets {
            let watched = epoll::add(
                &self.epoll,
                &socket,
                epoll::EventData::new_u64(u64::from(port)),
                epoll::EventFlags::IN,
            );
            if let Err(err) = watched {
                // Not read from then; the leg's RTP timeout will end it.
                tracing::warn!(port, %err, "cannot watch an RTP socket");
            }
            ports.push(port);
            self.by_port.insert(port, socket);
        }
    }

    /// Gives up the leg's sockets (closing them, unless the caller keeps them).
    fn release(&mut self, leg: LegId) -> Vec<(u16, UdpSocket)> {
        let ports = self.of_leg.remove(&leg).unwrap_or_default();
        let released: Vec<(u16, UdpSocket)> = ports
            .into_iter()
            .filter_map(|port| Some((port, self.by_port.remove(&port)?)))
            .collect();
        for (_, socket) in &released {
            // A socket that moves to another thread stays open: it must leave this epoll.
            let _ = epoll::delete(&self.epoll, socket);
        }
        released
    }
}

impl MediaShell {
    /// Runs until shutdown (every thread holds every thread's input, so the channels stay
    /// open until then).
    fn run(mut self) {
        let unix = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default();
        let mut bridge = Bridge::new(
            BridgeConfig {
                public_ip: self.settings.public_ip,
                rtp_timeout: self.settings.rtp_timeout,
                seed: rand::random(),
            },
            self.settings.prompts.clone(),
            Instant::now(),
            unix,
        );
        let mut sockets = match Sockets::new() {
            Ok(s) => s,
            Err(err) => {
                tracing::error!(%err, thread = self.index, "the media thread cannot watch sockets");
                return;
            }
        };
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
                    Ok(input) => self.input(now, input, &mut bridge, &mut sockets),
                    Err(TryRecvError::Empty) => break,
                    Err(TryRecvError::Disconnected) => return,
                }
            }
            sockets.read_into(&mut bridge, &mut buf);
            // The tick runs after what it read, never before a datagram's arrival.
            bridge.handle_timeout(Instant::now());
            while let Some(t) = bridge.poll_transmit() {
                if let Some(socket) = sockets.by_port.get(&t.from_port) {
                    let _ = socket.send_to(t.data, t.to);
                }
            }
            while let Some(ev) = bridge.poll_event() {
                let _ = self.events.send(ev);
            }
            self.clock.record(&bridge, now.elapsed());
        }
    }

    fn input(
        &mut self,
        now: Instant,
        input: ThreadInput,
        bridge: &mut Bridge,
        sockets: &mut Sockets,
    ) {
        // What concerns a leg still on its way here waits for it: commands, and an order
        // to pass it on again that came before it did.
        let for_leg = match &input {
            ThreadInput::Command(cmd) => cmd.leg(),
            ThreadInput::Export { leg, .. } => Some(*leg),
            ThreadInput::Expect(_) | ThreadInput::Import { .. } => None,
        };
        if let Some(waiting) = for_leg.and_then(|leg| self.awaiting.get_mut(&leg)) {
            return waiting.push(input);
        }
        match input {
            ThreadInput::Command(cmd) => self.command(now, cmd, bridge, sockets),
            ThreadInput::Expect(leg) => {
                self.awaiting.entry(leg).or_default();
            }
            ThreadInput::Export { leg, to } => {
                let moving = bridge.take_leg(leg);
                let sockets = sockets.release(leg);
                tracing::debug!(%leg, from = self.index, to, "a leg moves to another media thread");
                if self.peers[to]
                    .send(ThreadInput::Import {
                        leg,
                        moving,
                        sockets,
                    })
                    .is_err()
                {
                    tracing::error!("a media thread is gone");
                }
            }
            ThreadInput::Import {
                leg,
                moving,
                sockets: arrived,
            } => {
                sockets.adopt(leg, arrived);
                if let Some(moving) = moving {
                    bridge.put_leg(leg, moving);
                }
                for waited in self.awaiting.remove(&leg).unwrap_or_default() {
                    self.input(now, waited, bridge, sockets);
                }
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
        match sockets.bind(&self.settings.reservations, leg, &ports) {
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

#[cfg(test)]
mod tests {
    use super::*;
    use confero_media::bridge::{LegMedia, MixId, TICK};
    use confero_media::codec::{CodecKind, Decoder, Encoder};
    use confero_media::rtp::{is_rtcp, parse_rtp, write_rtp, RtpHeader};
    use confero_media::tone::{amplitude, Tone};

    const LOOPBACK: IpAddr = IpAddr::V4(std::net::Ipv4Addr::LOCALHOST);

    /// A phone on loopback: its socket, and the port the server binds for its leg (free
    /// when asked: bound, read back, let go).
    fn phone() -> (UdpSocket, u16) {
        let sock = UdpSocket::bind((LOOPBACK, 0)).unwrap();
        sock.set_read_timeout(Some(Duration::from_millis(200)))
            .unwrap();
        let port = UdpSocket::bind((LOOPBACK, 0))
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        (sock, port)
    }

    fn open(leg: u64, port: u16, phone: &UdpSocket) -> MediaCommand {
        MediaCommand::Open {
            leg: LegId(leg),
            port,
            media: LegMedia {
                codec: CodecKind::Pcmu,
                payload_type: 0,
                dtmf_payload_type: None,
                remote: phone.local_addr().unwrap(),
                two_way: true,
            },
            rtcp_mux: true,
            signalled_from: LOOPBACK,
        }
    }

    fn legs_per_thread(clocks: &[Arc<MediaClock>]) -> Vec<u64> {
        clocks.iter().map(|c| c.stats().legs).collect()
    }

    /// A leg told to move twice before its first move is done (into a room on one thread,
    /// then into a call on another) ends where the placement says, with its socket, and is
    /// heard there.
    #[test]
    fn a_leg_moved_twice_at_once_arrives_where_it_was_sent_last() {
        let (events, mut events_rx) = tokio::sync::mpsc::unbounded_channel();
        let settings = MediaSettings {
            reservations: Arc::new(RtpReservations::new(LOOPBACK)),
            public_ip: LOOPBACK,
            prompts: Arc::new(PromptLibrary::builtin()),
            rtp_timeout: Duration::from_secs(30),
        };
        let (mut threads, join, clocks) = MediaThreads::start(3, &settings, events).unwrap();
        let (p1, port1) = phone();
        let (p2, port2) = phone();
        let (p3, port3) = phone();
        // Leg 1 in room 1, leg 3 in call 9, each on a thread of its own; leg 2 on the third.
        threads.send(MediaCommand::Place {
            leg: LegId(1),
            near: MixId::Room(1),
        });
        threads.send(open(1, port1, &p1));
        threads.send(MediaCommand::Mix {
            leg: LegId(1),
            mix: MixId::Room(1),
        });
        // Leg 2's pair is held from when the engine handed it out, as the server does:
        // its thread must use the held socket (binding the port again would fail).
        assert!(settings.reservations.reserve(port2));
        threads.send(open(2, port2, &p2));
        threads.send(open(3, port3, &p3));
        threads.send(MediaCommand::Mix {
            leg: LegId(3),
            mix: MixId::Call(9),
        });
        let home = |threads: &MediaThreads, leg| threads.placement.bridge_of(LegId(leg)).unwrap();
        let (t1, t2, t3) = (home(&threads, 1), home(&threads, 2), home(&threads, 3));
        assert!(t1 != t2 && t2 != t3 && t1 != t3);
        // Leg 2 joins room 1, then at once call 9: two moves in flight.
        threads.send(MediaCommand::Mix {
            leg: LegId(2),
            mix: MixId::Room(1),
        });
        threads.send(MediaCommand::Mix {
            leg: LegId(2),
            mix: MixId::Call(9),
        });
        assert_eq!(home(&threads, 2), t3);
        let mut expected = vec![0; 3];
        expected[t1] = 1;
        expected[t3] = 2;
        let deadline = Instant::now() + Duration::from_secs(2);
        while legs_per_thread(&clocks) != expected && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        assert_eq!(legs_per_thread(&clocks), expected);

        // Phone 2 sends a tone on its leg's socket, now on leg 3's thread: phone 3 hears it.
        let mut tone = Tone::new(8000, 1000.0, 8000);
        let (mut encoder, mut decoder) =
            (Encoder::new(CodecKind::Pcmu), Decoder::new(CodecKind::Pcmu));
        let (mut pcm, mut payload, mut packet, mut heard) =
            (Vec::new(), Vec::new(), Vec::new(), Vec::new());
        let mut buf = [0u8; 2048];
        for n in 0..75u16 {
            pcm.clear();
            payload.clear();
            packet.clear();
            tone.fill(160, &mut pcm);
            encoder.encode(&pcm, &mut payload);
            let header = RtpHeader {
                payload_type: 0,
                marker: n == 0,
                sequence: n,
                timestamp: u32::from(n) * 160,
                ssrc: 0x2222,
            };
            write_rtp(&header, &payload, &mut packet);
            p2.send_to(&packet, (LOOPBACK, port2)).unwrap();
            // Phone 3 reads what has come.
            p3.set_nonblocking(true).unwrap();
            while let Ok(n) = p3.recv(&mut buf) {
                if !is_rtcp(&buf[..n]) {
                    if let Ok((_, audio)) = parse_rtp(&buf[..n]) {
                        decoder.decode(audio, &mut heard);
                    }
                }
            }
            std::thread::sleep(TICK);
        }
        let last = &heard[heard.len().saturating_sub(4000)..];
        assert!(
            amplitude(last, 1000.0, 8000) > 2000.0,
            "phone 3 hears phone 2's tone: {:.0}",
            amplitude(last, 1000.0, 8000)
        );
        join.stop();
        while let Ok(ev) = events_rx.try_recv() {
            assert!(!matches!(ev, MediaEvent::Failed { .. }), "{ev:?}");
        }
        assert!(
            settings.reservations.take(port2).is_none(),
            "the held pair was used"
        );
    }
}
