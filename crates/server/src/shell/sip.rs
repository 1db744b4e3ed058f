//! The IO shell around [`confero_pbx::engine::Engine`]: the UDP socket, the TCP listener,
//! the clock, and persistence of registrations.
//!
//! One tokio task owns the engine and is the only place that calls into it, so the engine
//! needs no locks. Stream connections (TCP, TLS, WebSocket) live in [`super::conns`] and
//! hand their messages to this task as [`Input`].

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use confero_pbx::config::Snapshot;
use confero_pbx::engine::{Engine, EngineEvent, MediaEvent};
use confero_pbx::registrar::{Binding, BindingChange};
use confero_sip::transport::{Peer, Transport};
use confero_store::{Store, StoredBinding};
use tokio::io::Interest;
use tokio::net::{TcpListener, UdpSocket};
use tokio::sync::{mpsc, watch};

use super::conns::{ConnTable, Input};
use super::stamped;
use crate::live::publish::LiveState;

/// Largest UDP datagram we read; SIP over UDP must fit in far less (RFC 3261 §18.1.1).
const MAX_DATAGRAM: usize = 65_535;
/// Live views are rebuilt at most this often: rebuilding after every REGISTER cost more
/// than handling it (every registration is copied), and a console refreshes slower anyway.
const LIVE_PUBLISH_INTERVAL: Duration = Duration::from_millis(100);
/// Datagrams taken from the UDP socket per wake-up, between flushes.
const UDP_BATCH: usize = 64;
/// How long batches must stay full before new requests are refused (with the wait below):
/// a single slow moment is no flood.
const BACKLOG_GRACE: Duration = Duration::from_millis(20);
/// How long a request may have waited in the socket before new requests are refused, a
/// tenth of the clients' first retransmission timer (500 ms): a task kept off the CPU for
/// a moment catches up well within it, and a flood is refused long before clients
/// retransmit (which would only add to the load).
const QUEUE_DELAY_LIMIT: Duration = Duration::from_millis(50);

/// Everything the engine task needs.
pub(crate) struct SipShell {
    pub(crate) udp: Arc<UdpSocket>,
    pub(crate) tcp: TcpListener,
    pub(crate) engine: Engine,
    pub(crate) store: Store,
    pub(crate) production: watch::Receiver<Arc<Snapshot>>,
    pub(crate) live: Arc<LiveState>,
    pub(crate) shutdown: watch::Receiver<bool>,
    /// The media threads, to which the engine's commands go.
    pub(crate) media: super::media::MediaThreads,
    pub(crate) media_events: mpsc::UnboundedReceiver<MediaEvent>,
    /// Actions from the API (kick, mute).
    pub(crate) control: mpsc::Receiver<crate::live::publish::Control>,
    /// Something changed since the live view was last published.
    pub(crate) live_dirty: bool,
    pub(crate) live_published_at: Instant,
    /// How long the last publication took: with thousands of registrations it is not free,
    /// so it is spaced to take at most a tenth of the loop.
    pub(crate) live_publish_cost: Duration,
    /// Whether UDP input backs up ([`SipShell::read_udp_batch`]).
    pub(crate) backlog: Backlog,
    /// Room for the receive time of each datagram read ([`stamped::recv_timestamped`]).
    pub(crate) cmsg: Vec<u8>,
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

    /// Takes up to [`UDP_BATCH`] datagrams that are waiting, and tells the engine whether
    /// input backs up ([`Backlog`]).
    fn read_udp_batch(&mut self, buf: &mut [u8]) {
        let clock = stamped::ArrivalClock::now();
        let (udp, cmsg) = (&self.udp, &mut self.cmsg);
        let mut taken = 0;
        let mut waited = None;
        while taken < UDP_BATCH {
            let read = udp.try_io(Interest::READABLE, || {
                stamped::recv_timestamped(&**udp, buf, cmsg)
            });
            match read {
                Ok((n, addr, at)) => {
                    taken += 1;
                    waited = clock.age(at);
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
        let backlogged = self
            .backlog
            .after_batch(Instant::now(), taken == UDP_BATCH, waited);
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
            self.media.send(cmd);
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

/// Whether the SIP input backs up: full batches in a row for [`BACKLOG_GRACE`], the last
/// of which had waited [`QUEUE_DELAY_LIMIT`] in the socket, mean input arrives faster
/// than it is taken. The engine is then told it is overloaded (it refuses new work
/// cheaply) until a batch finds the socket empty. A burst the socket buffer absorbs (a
/// load client's, phones after an outage), or the backlog of a moment off the CPU, clears
/// before either and is served.
#[derive(Debug, Default)]
pub(crate) struct Backlog {
    /// Since when every batch has found more waiting.
    full_since: Option<Instant>,
    backlogged: bool,
    warned_at: Option<Instant>,
}

impl Backlog {
    /// A batch was taken at `now`: `full` when it stopped with more waiting, `waited` how
    /// long its last datagram had been in the socket (if the kernel said). Whether input
    /// backs up now.
    pub(crate) fn after_batch(
        &mut self,
        now: Instant,
        full: bool,
        waited: Option<Duration>,
    ) -> bool {
        self.full_since = if full {
            Some(self.full_since.unwrap_or(now))
        } else {
            None
        };
        let backlogged = self
            .full_since
            .is_some_and(|since| now.duration_since(since) >= BACKLOG_GRACE)
            && (self.backlogged || waited.is_none_or(|w| w >= QUEUE_DELAY_LIMIT));
        // Once per episode of a flood, not once per flap.
        if backlogged
            && !self.backlogged
            && self
                .warned_at
                .is_none_or(|at| now.duration_since(at) >= Duration::from_secs(60))
        {
            self.warned_at = Some(now);
            tracing::warn!("SIP input arrives faster than it is taken: new requests are refused with 503 until it eases");
        }
        self.backlogged = backlogged;
        backlogged
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

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    /// Feeds batches every millisecond for `span`, each full and with `waited`; whether
    /// input was found backing up after the last.
    fn batches(
        backlog: &mut Backlog,
        from: Instant,
        span: Duration,
        waited: Option<Duration>,
    ) -> bool {
        let mut at = from;
        let mut backlogged = false;
        while at <= from + span {
            backlogged = backlog.after_batch(at, true, waited);
            at += MS;
        }
        backlogged
    }

    #[test]
    fn a_backlog_that_waited_little_is_served_however_long_batches_stay_full() {
        // A task kept off the CPU catching up, or a load client's burst: full batches for
        // far longer than the grace, but nothing has waited long.
        let mut backlog = Backlog::default();
        let t = Instant::now();
        assert!(!batches(&mut backlog, t, 200 * MS, Some(40 * MS)));
        assert!(!backlog.after_batch(t + 201 * MS, false, Some(MS)));
    }

    #[test]
    fn input_that_waits_past_the_limit_for_the_grace_backs_up_until_the_socket_empties() {
        let mut backlog = Backlog::default();
        let t = Instant::now();
        // Waiting long, but not yet for the grace: one slow moment is no flood.
        assert!(!batches(
            &mut backlog,
            t,
            BACKLOG_GRACE - MS,
            Some(150 * MS)
        ));
        assert!(batches(
            &mut backlog,
            t + BACKLOG_GRACE,
            5 * MS,
            Some(150 * MS)
        ));
        // Refusing new work shortens the waits; it goes on while batches stay full.
        assert!(batches(&mut backlog, t + 30 * MS, 10 * MS, Some(5 * MS)));
        assert!(!backlog.after_batch(t + 41 * MS, false, Some(MS)));
        // And starts over: a new episode needs the grace again.
        assert!(!backlog.after_batch(t + 42 * MS, true, Some(150 * MS)));
    }

    #[test]
    fn without_receive_times_full_batches_for_the_grace_back_up() {
        let mut backlog = Backlog::default();
        let t = Instant::now();
        assert!(!batches(&mut backlog, t, BACKLOG_GRACE - MS, None));
        assert!(backlog.after_batch(t + BACKLOG_GRACE, true, None));
    }
}
