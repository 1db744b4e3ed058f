//! Caps on stream connections (SIP over TCP and TLS, HTTP and WebSocket): per source
//! address and in all, below the process's descriptor limit, and timeouts for connections
//! that say nothing — so neither one address nor a crowd of them can take every descriptor
//! and keep phones, browsers and the console from connecting (slowloris).
//!
//! A [`Permit`] is held for as long as its connection lives; dropping it gives the place
//! back. The HTTP listener is wrapped by [`LimitedListener`], whose streams also close after
//! [`HTTP_IDLE`] without a byte read.

use std::collections::HashMap;
use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};

/// Connections one address may hold, all stream kinds together: an office behind one NAT
/// with dozens of desk phones over TCP and browser tabs still fits.
pub(crate) const MAX_PER_SOURCE: usize = 64;
/// Descriptors left for everything else (database, logs, outbound trunks, the console's
/// own connections when the cap is reached).
const RESERVED_DESCRIPTORS: u64 = 256;
/// Connections in all, at most (each costs a descriptor and a few KiB).
const MAX_TOTAL: usize = 10_000;
/// An HTTP or WebSocket connection that sends nothing for this long is closed (WebSocket
/// clients answer the server's pings every 30 s).
pub(crate) const HTTP_IDLE: Duration = Duration::from_secs(75);

/// Why a connection was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Refusal {
    PerSource,
    Total,
}

#[derive(Default)]
struct Counts {
    total: usize,
    per_source: HashMap<IpAddr, usize>,
}

/// The shared counts; see the module documentation.
pub(crate) struct ConnLimits {
    max_total: usize,
    max_per_source: usize,
    counts: Mutex<Counts>,
    refused: AtomicU64,
}

impl ConnLimits {
    /// Limits fitting `descriptors` (the process's open-file limit), of which
    /// `rtp_sockets` may go to media.
    pub(crate) fn for_descriptors(descriptors: u64, rtp_sockets: u64) -> Arc<ConnLimits> {
        let room = descriptors.saturating_sub(rtp_sockets + RESERVED_DESCRIPTORS);
        let max_total = usize::try_from(room)
            .unwrap_or(MAX_TOTAL)
            .clamp(64, MAX_TOTAL);
        Arc::new(Self::new(max_total, MAX_PER_SOURCE))
    }

    pub(crate) fn new(max_total: usize, max_per_source: usize) -> ConnLimits {
        ConnLimits {
            max_total,
            max_per_source,
            counts: Mutex::default(),
            refused: AtomicU64::new(0),
        }
    }

    /// A place for a connection from `ip`, or why not.
    pub(crate) fn acquire(self: &Arc<Self>, ip: IpAddr) -> Result<Permit, Refusal> {
        let mut c = self.counts.lock().unwrap_or_else(|e| e.into_inner());
        let refusal = if c.total >= self.max_total {
            Some(Refusal::Total)
        } else if c.per_source.get(&ip).copied().unwrap_or(0) >= self.max_per_source {
            Some(Refusal::PerSource)
        } else {
            None
        };
        if let Some(r) = refusal {
            let n = self.refused.fetch_add(1, Ordering::Relaxed);
            // One line for the first refusal and then one per thousand: a flood of
            // connections must not become a flood of logs.
            if n.is_multiple_of(1000) {
                tracing::warn!(%ip, why = ?r, refused_so_far = n + 1, "connection refused");
            }
            return Err(r);
        }
        c.total += 1;
        *c.per_source.entry(ip).or_default() += 1;
        Ok(Permit {
            limits: self.clone(),
            ip,
        })
    }

    fn release(&self, ip: IpAddr) {
        let mut c = self.counts.lock().unwrap_or_else(|e| e.into_inner());
        c.total = c.total.saturating_sub(1);
        if let Some(n) = c.per_source.get_mut(&ip) {
            *n -= 1;
            if *n == 0 {
                c.per_source.remove(&ip);
            }
        }
    }

    /// Connections held now.
    pub(crate) fn in_use(&self) -> usize {
        self.counts.lock().unwrap_or_else(|e| e.into_inner()).total
    }

    /// Connections refused since start.
    pub(crate) fn refused(&self) -> u64 {
        self.refused.load(Ordering::Relaxed)
    }

    pub(crate) fn max_total(&self) -> usize {
        self.max_total
    }
}

/// One connection's place; given back on drop.
pub(crate) struct Permit {
    limits: Arc<ConnLimits>,
    ip: IpAddr,
}

impl Drop for Permit {
    fn drop(&mut self) {
        self.limits.release(self.ip);
    }
}

/// The HTTP listener with the limits: connections over them are closed at once.
pub(crate) struct LimitedListener {
    listener: TcpListener,
    limits: Arc<ConnLimits>,
}

impl LimitedListener {
    pub(crate) fn new(listener: TcpListener, limits: Arc<ConnLimits>) -> Self {
        LimitedListener { listener, limits }
    }
}

impl axum::serve::Listener for LimitedListener {
    type Io = LimitedStream;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        loop {
            match self.listener.accept().await {
                Ok((stream, addr)) => {
                    let Ok(permit) = self.limits.acquire(addr.ip()) else {
                        drop(stream);
                        continue;
                    };
                    return (LimitedStream::new(stream, permit), addr);
                }
                Err(err) => {
                    // Out of descriptors or similar: wait rather than spin.
                    tracing::debug!(%err, "HTTP accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        self.listener.local_addr()
    }
}

/// The same limits for the HTTPS listener (axum-server): put inside its TLS acceptor, so
/// a connection over them is closed before any handshake work.
#[derive(Clone)]
pub(crate) struct LimitedAcceptor {
    pub(crate) limits: Arc<ConnLimits>,
}

impl<S> axum_server::accept::Accept<TcpStream, S> for LimitedAcceptor {
    type Stream = LimitedStream;
    type Service = S;
    type Future = std::future::Ready<std::io::Result<(LimitedStream, S)>>;

    fn accept(&self, stream: TcpStream, service: S) -> Self::Future {
        let permit = stream
            .peer_addr()
            .map_err(std::io::Error::other)
            .and_then(|addr| {
                self.limits
                    .acquire(addr.ip())
                    .map_err(|why| std::io::Error::other(format!("{why:?}")))
            });
        std::future::ready(permit.map(|p| (LimitedStream::new(stream, p), service)))
    }
}

/// A TCP stream holding its [`Permit`], closed after [`HTTP_IDLE`] without a byte read.
pub(crate) struct LimitedStream {
    stream: TcpStream,
    _permit: Permit,
    idle: Pin<Box<tokio::time::Sleep>>,
}

impl LimitedStream {
    fn new(stream: TcpStream, permit: Permit) -> Self {
        LimitedStream {
            stream,
            _permit: permit,
            idle: Box::pin(tokio::time::sleep(HTTP_IDLE)),
        }
    }
}

impl AsyncRead for LimitedStream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        match Pin::new(&mut self.stream).poll_read(cx, buf) {
            Poll::Ready(r) => {
                if buf.filled().len() > before {
                    let deadline = tokio::time::Instant::now() + HTTP_IDLE;
                    self.idle.as_mut().reset(deadline);
                }
                Poll::Ready(r)
            }
            Poll::Pending => match self.idle.as_mut().poll(cx) {
                Poll::Ready(()) => Poll::Ready(Err(std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    "connection idle",
                ))),
                Poll::Pending => Poll::Pending,
            },
        }
    }
}

impl AsyncWrite for LimitedStream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write(cx, data)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn per_source_then_total_and_places_come_back() {
        let limits = Arc::new(ConnLimits::new(5, 2));
        let a: IpAddr = "192.0.2.1".parse().unwrap();
        let b: IpAddr = "192.0.2.2".parse().unwrap();
        let p1 = limits.acquire(a).unwrap();
        let _p2 = limits.acquire(a).unwrap();
        assert_eq!(limits.acquire(a).err(), Some(Refusal::PerSource));
        let held: Vec<_> = (0..3)
            .map(|i| limits.acquire(IpAddr::from([198, 51, 100, i])).unwrap())
            .collect();
        assert_eq!(limits.acquire(b).err(), Some(Refusal::Total));
        drop(p1);
        let _p3 = limits.acquire(a).expect("a place again");
        drop(held);
        assert_eq!(limits.in_use(), 2);
        assert_eq!(limits.refused(), 2);
    }

    #[test]
    fn the_total_fits_the_descriptors() {
        assert_eq!(ConnLimits::for_descriptors(1024, 0).max_total(), 768);
        assert_eq!(
            ConnLimits::for_descriptors(1_048_576, 20_000).max_total(),
            MAX_TOTAL
        );
        assert_eq!(ConnLimits::for_descriptors(1024, 10_000).max_total(), 64);
    }
}
