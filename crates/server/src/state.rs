//! What every HTTP handler shares: the store, the live view of the engine, the channel
//! that hands new revisions to the engine, the sign-in throttle and where this server
//! listens.

use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use confero_pbx::config::Snapshot;
use tokio::sync::watch;

use crate::http::throttle::{Attempt, LoginThrottle};
use crate::live::LiveView;

/// Largest request body accepted anywhere in the API.
pub(crate) const MAX_BODY_BYTES: usize = 64 * 1024;

/// Where this server can be reached, as bound at start.
#[derive(Clone, Debug)]
pub(crate) struct Endpoints {
    pub(crate) http: SocketAddr,
    pub(crate) https: Option<SocketAddr>,
    /// The HTTPS certificate is our self-signed trial one.
    pub(crate) self_signed: bool,
    /// The address put in SIP and SDP (`--public-address`, or the one found).
    pub(crate) advertised: IpAddr,
    /// `--domain`: when set, the only SIP domains served.
    pub(crate) domains: Vec<String>,
}

#[derive(Clone)]
pub(crate) struct AppState {
    pub(crate) store: confero_store::Store,
    pub(crate) live: Arc<dyn LiveView>,
    /// Receives each newly applied revision; the engine holds the receiver.
    pub(crate) production: watch::Sender<Arc<Snapshot>>,
    /// Failed sign-ins (console and HTTP Basic), shared so both count toward one budget.
    throttle: Arc<Mutex<LoginThrottle>>,
    /// Becomes true when the server shuts down: long-lived responses (event streams)
    /// end, so that graceful shutdown does not wait for browsers to close them.
    pub(crate) closing: watch::Receiver<bool>,
    /// Where SIP-over-WebSocket connections go (absent in tests without a SIP engine).
    pub(crate) websocket: Option<crate::shell::ConnTable>,
    /// The addresses this server listens on, for the "Connect Odoo" page.
    pub(crate) endpoints: Option<Arc<Endpoints>>,
    /// `--metrics-token`: /metrics is refused without it.
    pub(crate) metrics_token: Option<Arc<str>>,
    /// Stream connection limits, for /metrics.
    pub(crate) connections: Option<Arc<crate::limits::ConnLimits>>,
    /// Each media thread's clock and load, by thread, for /metrics.
    pub(crate) media_clocks: Vec<Arc<crate::shell::media::MediaClock>>,
}

impl std::fmt::Debug for AppState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AppState").finish_non_exhaustive()
    }
}

impl AppState {
    pub(crate) fn new(
        store: confero_store::Store,
        live: Arc<dyn LiveView>,
        production: watch::Sender<Arc<Snapshot>>,
    ) -> Self {
        AppState {
            store,
            live,
            production,
            throttle: Arc::default(),
            closing: watch::channel(false).1,
            websocket: None,
            endpoints: None,
            metrics_token: None,
            connections: None,
            media_clocks: Vec::new(),
        }
    }

    /// Reports how each media thread keeps time and how loaded it is in /metrics.
    pub(crate) fn with_media_clocks(
        mut self,
        clocks: Vec<Arc<crate::shell::media::MediaClock>>,
    ) -> Self {
        self.media_clocks = clocks;
        self
    }

    /// Reports the stream connection limits in /metrics.
    pub(crate) fn with_connection_limits(mut self, limits: Arc<crate::limits::ConnLimits>) -> Self {
        self.connections = Some(limits);
        self
    }

    /// Requires `Authorization: Bearer token` on /metrics.
    pub(crate) fn with_metrics_token(mut self, token: Option<String>) -> Self {
        self.metrics_token = token.map(Arc::from);
        self
    }

    /// Tells the console where browsers can reach this server.
    pub(crate) fn with_endpoints(mut self, endpoints: Endpoints) -> Self {
        self.endpoints = Some(Arc::new(endpoints));
        self
    }

    /// Accepts SIP over WebSocket on `/ws`, feeding `conns`.
    pub(crate) fn with_websocket(mut self, conns: crate::shell::ConnTable) -> Self {
        self.websocket = Some(conns);
        self
    }

    /// Ends event streams when `closing` turns true.
    pub(crate) fn with_shutdown(mut self, closing: watch::Receiver<bool>) -> Self {
        self.closing = closing;
        self
    }

    fn throttle(&self) -> std::sync::MutexGuard<'_, LoginThrottle> {
        self.throttle.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// How long this sign-in must wait before its password is looked at, if at all.
    pub(crate) fn throttle_wait(&self, now: Instant, attempt: &Attempt) -> Option<Duration> {
        self.throttle().wait(now, attempt)
    }

    pub(crate) fn throttle_failed(&self, now: Instant, attempt: &Attempt) {
        self.throttle().failed(now, attempt);
    }

    pub(crate) fn throttle_succeeded(&self, now: Instant, attempt: &Attempt) {
        self.throttle().succeeded(now, attempt);
    }

    /// Publishes the draft, then hands the new revision to the engine: the one way a
    /// change reaches calls, for the API and the console alike.
    pub(crate) async fn apply(&self) -> Result<Snapshot, confero_store::StoreError> {
        let snapshot = self.store.apply().await?;
        // Two applies can finish out of order; never let the engine go back to an
        // older revision, and do not wake it when nothing changed.
        self.production.send_if_modified(|current| {
            if snapshot.revision > current.revision {
                *current = Arc::new(snapshot.clone());
                true
            } else {
                false
            }
        });
        Ok(snapshot)
    }
}
