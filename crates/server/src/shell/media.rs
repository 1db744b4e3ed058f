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

use std::io::{ErrorKind, IoSliceMut};
use std::net::{IpAddr, SocketAddr, SocketAddrV4, SocketAddrV6, UdpSocket};
use std::os::fd::AsRawFd;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, Sender, TryRecvError};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use confero_media::bridge::{
    Bridge, BridgeConfig, ClockStats, LegId, MediaCommand, MediaEvent, MovingLeg, PromptError,
    PromptLibrary,
};
use confero_media::idmap::IdMap;
use confero_media::placement::{Placement, Routed};
use nix::sys::socket::{
    recvmsg, setsockopt, sockopt, ControlMessageOwned, MsgFlags, SockaddrStorage,
};
use rustix::buffer::spare_capacity;
use rustix::event::{epoll, Timespec};
use rustix::fd::OwnedFd;
use tokio::sync::mpsc::UnboundedSender;

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

/// Turns the kernel's receive times (wall clock) into the monotonic clock the bridge keeps,
/// from one reading of both clocks per round of reads.
struct ArrivalClock {
    wall: Duration,
    now: Instant,
}

/// A receive time further back than this is not believed (the wall clock was stepped).
const MAX_RECEIVE_AGE: Duration = Duration::from_secs(1);

impl ArrivalClock {
    fn now() -> ArrivalClock {
        ArrivalClock {
            wall: SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .unwrap_or_default(),
            now: Instant::now(),
        }
    }

    /// When a datagram received at wall-clock time `at` arrived; now if unknown.
    fn arrival(&self, at: Option<Duration>) -> Instant {
        at.and_then(|at| self.wall.checked_sub(at))
            .filter(|age| *age <= MAX_RECEIVE_AGE)
            .and_then(|age| self.now.checked_sub(age))
            .unwrap_or(self.now)
    }
}

/// Reads one datagram: its length, its sender, and when the kernel received it (wall
/// clock), if it said.
fn recv_timestamped(
    socket: &UdpSocket,
    buf: &mut [u8],
    cmsg: &mut [u8],
) -> std::io::Result<(usize, SocketAddr, Option<Duration>)> {
    let mut iov = [IoSliceMut::new(buf)];
    let msg = recvmsg::<SockaddrStorage>(
        socket.as_raw_fd(),
        &mut iov,
        Some(cmsg),
        MsgFlags::MSG_DONTWAIT,
    )
    .map_err(std::io::Error::from)?;
    let from = msg.address.as_ref().and_then(|a| {
        a.as_sockaddr_in()
            .map(|s| SocketAddr::V4(SocketAddrV4::from(*s)))
            .or_else(|| {
                a.as_sockaddr_in6()
                    .map(|s| SocketAddr::V6(SocketAddrV6::from(*s)))
            })
    });
    let Some(from) = from else {
        return Err(std::io::Error::new(
            ErrorKind::InvalidData,
            "a datagram without a sender",
        ));
    };
    let at = msg.cmsgs().ok().and_then(|mut cmsgs| {
        cmsgs.find_map(|c| match c {
            ControlMessageOwned::ScmTimestampns(ts) => Some(Duration::new(
                u64::try_from(ts.tv_sec()).ok()?,
                u32::try_from(ts.tv_nsec()).ok()?,
            )),
            _ => None,
        })
    });
    Ok((msg.bytes, from, at))
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

/// What every media thread is started with.
pub(crate) struct MediaSettings {
    pub(crate) bind_ip: IpAddr,
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
                bind_ip: settings.bind_ip,
                public_ip: settings.public_ip,
                prompts: settings.prompts.clone(),
                rtp_timeout: settings.rtp_timeout,
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
    bind_ip: IpAddr,
    public_ip: IpAddr,
    prompts: Arc<PromptLibrary>,
    rtp_timeout: Duration,
    commands: Receiver<ThreadInput>,
    /// Every thread's input (this one's included), for handing legs over.
    peers: Vec<Sender<ThreadInput>>,
    events: UnboundedSender<MediaEvent>,
    shutdown: Arc<AtomicBool>,
    /// Where the thread reports how it keeps time.
    clock: Arc<MediaClock>,
    /// Legs on their way here, with the commands that came for them meanwhile.
    awaiting: IdMap<LegId, Vec<MediaCommand>>,
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
            cmsg: nix::cmsg_space!(nix::sys::time::TimeSpec),
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
        let clock = ArrivalClock::now();
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
            for ev in &self.ready {
                let port = ev.data.u64() as u16;
                let Some(socket) = self.by_port.get(&port) else {
                    continue;
                };
                match recv_timestamped(socket, buf, &mut self.cmsg) {
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

    /// Binds `ports` for `leg` (all or none).
    fn bind(&mut self, ip: IpAddr, leg: LegId, ports: &[u16]) -> std::io::Result<()> {
        let mut bound = Vec::with_capacity(ports.len());
        for &port in ports {
            let socket = UdpSocket::bind(SocketAddr::new(ip, port))?;
            socket.set_nonblocking(true)?;
            if let Err(err) = setsockopt(&socket, sockopt::ReceiveTimestampns, &true) {
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
    /// Runs until shutdown, or until the engine is gone.
    fn run(mut self) {
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
            bridge.handle_timeout(now);
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
        match input {
            ThreadInput::Command(cmd) => {
                if let Some(waiting) = cmd.leg().and_then(|leg| self.awaiting.get_mut(&leg)) {
                    return waiting.push(cmd);
                }
                self.command(now, cmd, bridge, sockets);
            }
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
                for cmd in self.awaiting.remove(&leg).unwrap_or_default() {
                    self.command(now, cmd, bridge, sockets);
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
