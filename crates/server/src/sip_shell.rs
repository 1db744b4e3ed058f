//! The IO shell around [`confero_pbx::engine::Engine`]: UDP and TCP sockets, the clock,
//! and persistence of registrations.
//!
//! One tokio task owns the engine and is the only place that calls into it, so the engine
//! needs no locks. Stream connections each have a reader task (framing by Content-Length,
//! feeding complete messages to the engine task) and a writer task (fed by a channel).
//! Messages for a stream peer whose connection is gone open a new outbound connection
//! (a TCP phone that re-connected, or a binding restored after restart).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use crate::limits::{ConnLimits, Permit};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use confero_pbx::config::Snapshot;
use confero_pbx::engine::{Engine, EngineEvent, MediaCommand, MediaEvent};
use confero_pbx::registrar::{Binding, BindingChange};
use confero_sip::transport::{ConnId, Frame, Peer, StreamFramer, Transport};
use confero_store::{Store, StoredBinding};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio::sync::{mpsc, watch};

use crate::live::LiveState;

/// Largest UDP datagram we read; SIP over UDP must fit in far less (RFC 3261 §18.1.1).
const MAX_DATAGRAM: usize = 65_535;
/// Simultaneous stream connections; beyond this new ones are refused.
const MAX_CONNECTIONS: usize = 10_000;
/// A stream peer that sends nothing for this long is disconnected (phones send CRLF
/// keep-alives or re-REGISTER well within it).
const IDLE_TIMEOUT: Duration = Duration::from_secs(600);
/// A stream's first message, and any message once begun, must arrive within this.
const MESSAGE_TIMEOUT: Duration = Duration::from_secs(10);
/// Live views are rebuilt at most this often: rebuilding after every REGISTER cost more
/// than handling it (every registration is copied), and a console refreshes slower anyway.
const LIVE_PUBLISH_INTERVAL: Duration = Duration::from_millis(100);
/// Datagrams taken from the UDP socket per wake-up, between flushes.
const UDP_BATCH: usize = 64;

/// Input from connection tasks to the engine task.
#[derive(Debug)]
pub(crate) enum Input {
    Message {
        data: Bytes,
        from: Peer,
    },
    Closed(ConnId),
    /// An outbound connection could not be made, and why.
    Unreachable(Peer, String),
    /// A trunk's host name, looked up.
    Resolved {
        trunk: i64,
        result: Result<Vec<SocketAddr>, String>,
    },
}

/// Outbound halves of live stream connections.
#[derive(Default)]
struct Connections {
    writers: HashMap<ConnId, mpsc::Sender<Bytes>>,
    by_addr: HashMap<(Transport, SocketAddr), ConnId>,
    /// The places inbound TCP and TLS connections hold (WebSockets hold theirs as HTTP
    /// connections).
    permits: HashMap<ConnId, Permit>,
}

#[derive(Clone)]
pub(crate) struct ConnTable {
    inner: Arc<Mutex<Connections>>,
    next_id: Arc<AtomicU64>,
    input: mpsc::Sender<Input>,
    /// Opens TLS connections to trunks (certificates checked against `tls_names`).
    tls: Option<tokio_rustls::TlsConnector>,
    /// The host name a TLS peer's certificate must carry, by address (the trunk's host as
    /// configured: a name, or an IP literal).
    tls_names: Arc<Mutex<HashMap<SocketAddr, String>>>,
    limits: Arc<ConnLimits>,
}

impl ConnTable {
    pub(crate) fn new(
        input: mpsc::Sender<Input>,
        tls: Option<tokio_rustls::TlsConnector>,
        limits: Arc<ConnLimits>,
    ) -> Self {
        Self {
            inner: Arc::default(),
            next_id: Arc::new(AtomicU64::new(1)),
            input,
            tls,
            tls_names: Arc::default(),
            limits,
        }
    }

    /// Remembers that TLS connections to `addr` must present a certificate for `host`.
    fn expect_tls_name(&self, addr: SocketAddr, host: &str) {
        self.tls_names
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(addr, host.to_owned());
    }

    fn tls_name(&self, addr: SocketAddr) -> String {
        self.tls_names
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&addr)
            .cloned()
            .unwrap_or_else(|| addr.ip().to_string())
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Connections> {
        // A panic while holding this lock would be a bug in a few lines of map code; keep
        // serving with whatever the map holds rather than cascade.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Files a new connection; returns its id and the queue of what to send on it (`None`
    /// when the connection limit is reached). `permit` is the place an inbound connection
    /// holds under the limits, kept until it closes.
    pub(crate) fn register(
        &self,
        addr: SocketAddr,
        transport: Transport,
        permit: Option<Permit>,
    ) -> Option<(ConnId, mpsc::Sender<Bytes>, mpsc::Receiver<Bytes>)> {
        let id = ConnId(self.next_id.fetch_add(1, Ordering::Relaxed));
        let (tx, rx) = mpsc::channel::<Bytes>(256);
        let mut c = self.lock();
        if c.writers.len() >= MAX_CONNECTIONS {
            return None;
        }
        c.writers.insert(id, tx.clone());
        c.by_addr.insert((transport, addr), id);
        if let Some(p) = permit {
            c.permits.insert(id, p);
        }
        Some((id, tx, rx))
    }

    /// Forgets a connection and tells the engine (a WebSocket's registrations go with it).
    pub(crate) async fn closed(&self, id: ConnId, addr: SocketAddr, transport: Transport) {
        {
            let mut c = self.lock();
            c.writers.remove(&id);
            c.permits.remove(&id);
            if c.by_addr.get(&(transport, addr)) == Some(&id) {
                c.by_addr.remove(&(transport, addr));
            }
        }
        let _ = self.input.send(Input::Closed(id)).await;
    }

    /// Hands one received message to the engine; false when the engine is gone.
    pub(crate) async fn received(&self, data: Bytes, from: Peer) -> bool {
        self.input.send(Input::Message { data, from }).await.is_ok()
    }

    /// Starts the reader and writer tasks of a connected stream (TCP, or TLS over it);
    /// `permit` for one a peer opened.
    fn attach<S>(
        &self,
        stream: S,
        addr: SocketAddr,
        transport: Transport,
        permit: Option<Permit>,
    ) -> Option<ConnId>
    where
        S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + 'static,
    {
        let (id, tx, rx) = self.register(addr, transport, permit)?;
        let (read_half, write_half) = tokio::io::split(stream);
        tokio::spawn(write_loop(write_half, rx));
        let table = self.clone();
        tokio::spawn(async move {
            let peer = Peer {
                transport,
                addr,
                conn: Some(id),
            };
            read_loop(read_half, peer, &table.input, tx).await;
            table.closed(id, addr, transport).await;
        });
        Some(id)
    }

    /// Sends on the peer's connection, or on any live connection to its address, or on a
    /// new outbound one.
    fn send_stream(&self, peer: Peer, data: Bytes) {
        let writer = {
            let c = self.lock();
            peer.conn
                .and_then(|id| c.writers.get(&id))
                .or_else(|| {
                    c.by_addr
                        .get(&(peer.transport, peer.addr))
                        .and_then(|id| c.writers.get(id))
                })
                .cloned()
        };
        if let Some(w) = writer {
            if w.try_send(data).is_err() {
                tracing::warn!(peer = %peer.addr, "stream send queue full or closed; message dropped");
            }
            return;
        }
        match peer.transport {
            Transport::Tcp | Transport::Tls => {}
            _ => {
                // WebSocket peers can only be reached over the connection they opened.
                tracing::debug!(peer = %peer.addr, "no connection to {:?} peer; message dropped", peer.transport);
                return;
            }
        }
        let table = self.clone();
        tokio::spawn(async move {
            let connected =
                tokio::time::timeout(Duration::from_secs(5), TcpStream::connect(peer.addr)).await;
            let id = match connected {
                Ok(Ok(stream)) => {
                    let _ = stream.set_nodelay(true);
                    if peer.transport == Transport::Tls {
                        table.attach_tls(stream, peer.addr).await
                    } else {
                        table
                            .attach(stream, peer.addr, Transport::Tcp, None)
                            .ok_or_else(|| "too many connections".to_owned())
                    }
                }
                Ok(Err(err)) => Err(format!("cannot connect to {}: {err}", peer.addr)),
                Err(_) => Err(format!("cannot connect to {}: timed out", peer.addr)),
            };
            let writer = id.map(|id| table.lock().writers.get(&id).cloned());
            match writer {
                Ok(Some(w)) => {
                    let _ = w.send(data).await;
                }
                Ok(None) => {}
                Err(why) => {
                    tracing::info!(peer = %peer.addr, transport = ?peer.transport, %why, "message dropped");
                    let _ = table.input.send(Input::Unreachable(peer, why)).await;
                }
            }
        });
    }

    /// The TLS handshake over a fresh TCP connection, checking the peer's certificate
    /// against the name it must have.
    async fn attach_tls(&self, stream: TcpStream, addr: SocketAddr) -> Result<ConnId, String> {
        let connector = self
            .tls
            .clone()
            .ok_or_else(|| "TLS is not available".to_owned())?;
        let name = self.tls_name(addr);
        let server_name = rustls::pki_types::ServerName::try_from(name.clone())
            .map_err(|err| format!("{name:?} cannot be checked against a certificate: {err}"))?;
        let handshake = tokio::time::timeout(
            Duration::from_secs(10),
            connector.connect(server_name, stream),
        )
        .await;
        match handshake {
            Ok(Ok(tls)) => self
                .attach(tls, addr, Transport::Tls, None)
                .ok_or_else(|| "too many connections".to_owned()),
            Ok(Err(err)) => Err(format!("TLS with {addr} ({name}) failed: {err}")),
            Err(_) => Err(format!("TLS with {addr} ({name}) timed out")),
        }
    }
}

async fn write_loop<W: tokio::io::AsyncWrite + Unpin>(mut w: W, mut rx: mpsc::Receiver<Bytes>) {
    while let Some(data) = rx.recv().await {
        if w.write_all(&data).await.is_err() {
            break;
        }
    }
}

async fn read_loop<R: tokio::io::AsyncRead + Unpin>(
    mut r: R,
    peer: Peer,
    input: &mpsc::Sender<Input>,
    pong: mpsc::Sender<Bytes>,
) {
    let mut framer = StreamFramer::new();
    // Small: an idle connection holds it; longer messages gather in the framer.
    let mut buf = [0u8; 2048];
    // Until a first message, and while one is only partly here, the peer has
    // MESSAGE_TIMEOUT; then it may stay quiet for IDLE_TIMEOUT (phones send CRLF keep-alives).
    let mut deadline = tokio::time::Instant::now() + MESSAGE_TIMEOUT;
    loop {
        let n = match tokio::time::timeout_at(deadline, r.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return,
            Err(_) => {
                tracing::debug!(peer = %peer.addr, "closing a silent or too slow stream");
                return;
            }
            Ok(Ok(n)) => n,
        };
        let partial_before = framer.buffered() > 0;
        framer.push(&buf[..n]);
        let mut framed = false;
        while let Some(frame) = framer.next_frame() {
            framed = true;
            match frame {
                Ok(Frame::Message(data)) => {
                    if input
                        .send(Input::Message { data, from: peer })
                        .await
                        .is_err()
                    {
                        return;
                    }
                }
                Ok(Frame::KeepAlive) => {
                    let _ = pong.try_send(Bytes::from_static(b"\r\n"));
                }
                Err(err) => {
                    tracing::info!(peer = %peer.addr, %err, "closing stream with unreadable framing");
                    return;
                }
            }
        }
        let now = tokio::time::Instant::now();
        deadline = if framer.buffered() == 0 {
            now + IDLE_TIMEOUT
        } else if framed || !partial_before {
            // A new message started: it must be complete in time (slowloris).
            now + MESSAGE_TIMEOUT
        } else {
            deadline
        };
    }
}

/// Everything the engine task needs.
pub(crate) struct SipShell {
    pub(crate) udp: Arc<UdpSocket>,
    pub(crate) tcp: TcpListener,
    pub(crate) engine: Engine,
    pub(crate) store: Store,
    pub(crate) production: watch::Receiver<Arc<Snapshot>>,
    pub(crate) live: Arc<LiveState>,
    pub(crate) shutdown: watch::Receiver<bool>,
    /// Commands to the media thread (a std channel: that thread is not async).
    pub(crate) media_commands: std::sync::mpsc::Sender<MediaCommand>,
    pub(crate) media_events: mpsc::UnboundedReceiver<MediaEvent>,
    /// Actions from the API (kick, mute).
    pub(crate) control: mpsc::Receiver<crate::live::Control>,
    /// Something changed since the live view was last published.
    pub(crate) live_dirty: bool,
    pub(crate) live_published_at: Instant,
    /// How long the last publication took: with thousands of registrations it is not free,
    /// so it is spaced to take at most a tenth of the loop.
    pub(crate) live_publish_cost: Duration,
    /// UDP batches in a row that found more waiting ([`SipShell::read_udp_batch`]).
    pub(crate) full_batches: u32,
    pub(crate) backlogged: bool,
    pub(crate) backlog_warned_at: Option<Instant>,
    /// The attack counters as last published.
    pub(crate) published_security: confero_pbx::engine::SecurityStats,
    /// Stream connections (TCP, TLS, WebSocket) and the queue their tasks feed.
    pub(crate) conns: ConnTable,
    pub(crate) input: mpsc::Receiver<Input>,
}

pub(crate) fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Turns a stored binding back into a live one, if it has not lapsed meanwhile.
pub(crate) fn restore_binding(b: StoredBinding, now: Instant, now_unix: u64) -> Option<Binding> {
    let left = u64::try_from(b.expires_at_unix)
        .ok()?
        .checked_sub(now_unix)?;
    if left == 0 {
        return None;
    }
    let transport = Transport::from_via_name(&b.transport)?;
    if matches!(transport, Transport::Ws | Transport::Wss) {
        return None;
    }
    let addr: SocketAddr = b.source.parse().ok()?;
    Some(Binding {
        aor: b.aor,
        contact: b.contact_uri,
        expires_at: now + Duration::from_secs(left),
        expires_unix: now_unix + left,
        call_id: b.call_id,
        cseq: b.cseq,
        peer: Peer {
            transport,
            addr,
            conn: None,
        },
        user_agent: b.user_agent,
    })
}

fn stored(b: &Binding) -> StoredBinding {
    StoredBinding {
        aor: b.aor.clone(),
        contact_uri: b.contact.clone(),
        expires_at_unix: i64::try_from(b.expires_unix).unwrap_or(i64::MAX),
        call_id: b.call_id.clone(),
        cseq: b.cseq,
        transport: b.peer.transport.via_name().to_owned(),
        source: b.peer.addr.to_string(),
        user_agent: b.user_agent.clone(),
    }
}

impl SipShell {
    /// Runs until shutdown is signalled.
    pub(crate) async fn run(mut self) {
        let conns = self.conns.clone();
        let mut input_rx = std::mem::replace(&mut self.input, mpsc::channel(1).1);
        self.learn_tls_names(&conns);
        let persist_tx = Arc::new(PersistQueue::default());
        tokio::spawn(persist_loop(self.store.clone(), persist_tx.clone()));
        self.publish_live();
        let mut buf = vec![0u8; MAX_DATAGRAM];
        loop {
            let mut deadline = self
                .engine
                .poll_timeout()
                .map(tokio::time::Instant::from_std)
                .unwrap_or_else(|| tokio::time::Instant::now() + Duration::from_secs(3600));
            if self.live_dirty {
                deadline = deadline.min(tokio::time::Instant::from_std(self.next_publish_at()));
            }
            tokio::select! {
                r = self.udp.readable() => match r {
                    Ok(()) => self.read_udp_batch(&mut buf),
                    Err(err) => tracing::debug!(%err, "udp receive error"),
                },
                r = self.tcp.accept() => if let Ok((stream, addr)) = r {
                    // Over the limits the connection is closed at once (the limits log it).
                    if let Ok(permit) = conns.limits.acquire(addr.ip()) {
                        let _ = stream.set_nodelay(true);
                        let _ = conns.attach(stream, addr, Transport::Tcp, Some(permit));
                    }
                },
                Some(input) = input_rx.recv() => match input {
                    Input::Message { data, from } => self.engine.handle_datagram(Instant::now(), &data, from),
                    Input::Closed(id) => self.engine.connection_closed(Instant::now(), id),
                    Input::Unreachable(peer, why) => {
                        self.engine.handle_unreachable(Instant::now(), peer, &why)
                    }
                    Input::Resolved { trunk, result } => {
                        if let (Ok(addrs), Some(host)) = (&result, self.trunk_host(trunk)) {
                            for addr in addrs {
                                conns.expect_tls_name(*addr, &host);
                            }
                        }
                        self.engine.set_trunk_addresses(Instant::now(), trunk, result)
                    }
                },
                _ = tokio::time::sleep_until(deadline) => self.engine.handle_timeout(Instant::now()),
                Some(ev) = self.media_events.recv() => self.engine.handle_media_event(Instant::now(), ev),
                Some(ctl) = self.control.recv() => {
                    let answer = ctl.run(&mut self.engine, Instant::now());
                    // The API reads the published state: what it just did (an invitation
                    // whose id it returns) must be there for the client's next request.
                    self.publish_live();
                    answer();
                }
                r = self.production.changed() => {
                    if r.is_err() {
                        // The API (which holds the sender) is gone: we are shutting down.
                        self.stop(&conns, &persist_tx).await;
                        break;
                    }
                    let snap = self.production.borrow_and_update().clone();
                    tracing::info!(revision = snap.revision, "engine picked up a new production revision");
                    self.engine.set_config(Instant::now(), snap);
                    // Tell readers at once which revision calls now follow.
                    self.publish_live();
                    self.learn_tls_names(&conns);
                },
                _ = self.shutdown.changed() => {
                    self.stop(&conns, &persist_tx).await;
                    break;
                }
            }
            self.flush(&conns, &persist_tx).await;
        }
    }

    /// Takes up to [`UDP_BATCH`] datagrams that are waiting. Two full batches in a row
    /// mean input arrives faster than it is taken: the engine is told it is overloaded
    /// (it then refuses new work cheaply) until a batch finds the socket empty.
    fn read_udp_batch(&mut self, buf: &mut [u8]) {
        let mut taken = 0;
        while taken < UDP_BATCH {
            match self.udp.try_recv_from(buf) {
                Ok((n, addr)) => {
                    taken += 1;
                    let peer = Peer {
                        transport: Transport::Udp,
                        addr,
                        conn: None,
                    };
                    self.engine.handle_datagram(Instant::now(), &buf[..n], peer);
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                Err(err) => {
                    // ICMP errors surface here on Linux; the next datagram may be fine.
                    tracing::debug!(%err, "udp receive error");
                    taken += 1;
                }
            }
        }
        self.full_batches = if taken == UDP_BATCH {
            self.full_batches.saturating_add(1)
        } else {
            0
        };
        let backlogged = self.full_batches >= 2;
        if backlogged && !self.backlogged {
            // Once per episode of a flood, not once per flap.
            let now = Instant::now();
            if self
                .backlog_warned_at
                .is_none_or(|at| now.duration_since(at) >= Duration::from_secs(60))
            {
                self.backlog_warned_at = Some(now);
                tracing::warn!("SIP input arrives faster than it is taken: new requests are refused with 503 until it eases");
            }
        }
        self.backlogged = backlogged;
        self.engine.set_backlogged(backlogged);
    }

    /// The configured host of trunk `id`.
    fn trunk_host(&self, id: i64) -> Option<String> {
        self.production
            .borrow()
            .config
            .trunk(id)
            .map(|t| t.host.clone())
    }

    /// TLS trunks given by IP address: their certificate must carry that address.
    fn learn_tls_names(&self, conns: &ConnTable) {
        let snapshot = self.production.borrow().clone();
        for t in &snapshot.config.trunks {
            let unbracketed = t.host.trim_start_matches('[').trim_end_matches(']');
            if let Ok(ip) = unbracketed.parse::<std::net::IpAddr>() {
                conns.expect_tls_name(SocketAddr::new(ip, t.port), unbracketed);
            }
        }
    }

    /// Hangs up everyone and sends it out before the task ends.
    async fn stop(&mut self, conns: &ConnTable, persist: &PersistQueue) {
        self.engine.hang_up_all(Instant::now());
        self.flush(conns, persist).await;
        // Give stream writers a moment to put the BYEs on the wire.
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    async fn flush(&mut self, conns: &ConnTable, persist: &PersistQueue) {
        while let Some(cmd) = self.engine.poll_media() {
            if self.media_commands.send(cmd).is_err() {
                tracing::error!("the media thread is gone");
            }
        }
        while let Some(t) = self.engine.poll_transmit() {
            match t.peer.transport {
                Transport::Udp => {
                    if let Err(err) = self.udp.send_to(&t.data, t.peer.addr).await {
                        tracing::debug!(%err, peer = %t.peer.addr, "udp send failed");
                    }
                }
                _ => conns.send_stream(t.peer, t.data),
            }
        }
        while let Some(ev) = self.engine.poll_event() {
            self.live_dirty = true;
            match ev {
                EngineEvent::Binding(change) => {
                    persist.push(change);
                }
                EngineEvent::ResolveTrunk { trunk, host, port } => {
                    tokio::spawn(resolve(trunk, host, port, conns.input.clone()));
                }
                _ => {}
            }
        }
        // Attack counters change without engine events (a refused guess, a replay).
        let security = self.engine.security_stats();
        if security != self.published_security {
            self.published_security = security;
            self.live_dirty = true;
        }
        if self.live_dirty && Instant::now() >= self.next_publish_at() {
            self.publish_live();
        }
    }

    fn next_publish_at(&self) -> Instant {
        self.live_published_at + LIVE_PUBLISH_INTERVAL.max(self.live_publish_cost * 10)
    }

    fn publish_live(&mut self) {
        let start = Instant::now();
        self.live.update(&self.engine, unix_now());
        self.live_dirty = false;
        self.live_published_at = Instant::now();
        self.live_publish_cost = self.live_published_at - start;
    }
}

/// Looks a trunk's host up (A/AAAA; the port is the configured one) and tells the engine.
async fn resolve(trunk: i64, host: String, port: u16, input: mpsc::Sender<Input>) {
    let lookup = tokio::time::timeout(
        Duration::from_secs(10),
        tokio::net::lookup_host((host.as_str(), port)),
    )
    .await;
    let result = match lookup {
        Ok(Ok(addrs)) => {
            // IPv4 first: most providers and NATs still prefer it.
            let mut addrs: Vec<SocketAddr> = addrs.collect();
            addrs.sort_by_key(|a| a.is_ipv6());
            Ok(addrs)
        }
        Ok(Err(err)) => Err(err.to_string()),
        Err(_) => Err("the lookup timed out".to_owned()),
    };
    let _ = input.send(Input::Resolved { trunk, result }).await;
}

/// Writes binding changes to the store off the engine task, batching whatever queued up
/// meanwhile into one transaction; within a batch only the last change per binding counts.
/// Registration changes waiting to be written, the latest per binding: a flood of
/// refreshes faster than the database takes them costs one entry per binding, not one per
/// REGISTER.
#[derive(Default)]
struct PersistQueue {
    pending: std::sync::Mutex<HashMap<(String, String), BindingChange>>,
    wake: tokio::sync::Notify,
}

impl PersistQueue {
    fn push(&self, change: BindingChange) {
        let key = match &change {
            BindingChange::Upserted(b) => (b.aor.clone(), b.contact.clone()),
            BindingChange::Removed { aor, contact } => (aor.clone(), contact.clone()),
        };
        self.pending
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(key, change);
        self.wake.notify_one();
    }

    fn take(&self) -> HashMap<(String, String), BindingChange> {
        std::mem::take(&mut *self.pending.lock().unwrap_or_else(|e| e.into_inner()))
    }
}

/// Writes what the queue holds, in one transaction per batch, for as long as the queue
/// lives (the shell holds the other handle).
async fn persist_loop(store: Store, queue: Arc<PersistQueue>) {
    loop {
        let batch = queue.take();
        if batch.is_empty() {
            if Arc::strong_count(&queue) == 1 {
                return;
            }
            // Woken by a push, or now and then to notice the shell has gone.
            let _ = tokio::time::timeout(Duration::from_secs(1), queue.wake.notified()).await;
            continue;
        }
        let mut upserts = Vec::new();
        let mut deletes = Vec::new();
        for (key, change) in batch {
            match change {
                BindingChange::Upserted(b) => upserts.push(stored(&b)),
                BindingChange::Removed { .. } => deletes.push(key),
            }
        }
        if let Err(err) = store.save_bindings_batch(&upserts, &deletes).await {
            tracing::warn!(%err, "could not persist {} registration changes", upserts.len() + deletes.len());
        }
    }
}
