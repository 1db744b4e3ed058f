//! Stream connections (TCP, TLS, WebSocket): one reader task each (framing by
//! Content-Length, feeding complete messages to the engine task) and one writer task (fed
//! by a channel). Messages for a stream peer whose connection is gone open a new outbound
//! connection (a TCP phone that re-connected, or a binding restored after restart).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use confero_sip::transport::{ConnId, Frame, Peer, StreamFramer, Transport};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::mpsc;

use crate::limits::{ConnLimits, Permit};

/// Simultaneous stream connections; beyond this new ones are refused.
const MAX_CONNECTIONS: usize = 10_000;
/// A stream peer that sends nothing for this long is disconnected (phones send CRLF
/// keep-alives or re-REGISTER well within it).
const IDLE_TIMEOUT: Duration = Duration::from_secs(600);
/// A stream's first message, and any message once begun, must arrive within this.
const MESSAGE_TIMEOUT: Duration = Duration::from_secs(10);

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
    pub(crate) input: mpsc::Sender<Input>,
    /// Opens TLS connections to trunks (certificates checked against `tls_names`).
    tls: Option<tokio_rustls::TlsConnector>,
    /// The host name a TLS peer's certificate must carry, by address (the trunk's host as
    /// configured: a name, or an IP literal).
    tls_names: Arc<Mutex<HashMap<SocketAddr, String>>>,
    pub(crate) limits: Arc<ConnLimits>,
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
    pub(crate) fn expect_tls_name(&self, addr: SocketAddr, host: &str) {
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
    pub(crate) fn attach<S>(
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
    pub(crate) fn send_stream(&self, peer: Peer, data: Bytes) {
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
