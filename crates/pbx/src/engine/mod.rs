//! The signalling engine: one sans-IO machine for registrations, two-party calls,
//! conference rooms, invitations, transfers and trunks.
//!
//! Run loop (driven by the IO shell, see `confero-server`):
//! 1. feed input: [`Engine::handle_datagram`] for a UDP datagram or a framed stream message,
//!    [`Engine::handle_media_event`] for what the media bridge reports,
//!    [`Engine::handle_timeout`] when the instant from [`Engine::poll_timeout`] has come,
//!    [`Engine::set_config`] when a new production revision is applied;
//! 2. drain [`Engine::poll_media`] (to the media bridge), then [`Engine::poll_transmit`]
//!    (to the network), then [`Engine::poll_event`] (bindings to persist, live views to
//!    refresh);
//! 3. sleep until [`Engine::poll_timeout`].
//!
//! Inside, every input goes through the transaction layer of `confero-sip`, then is
//! routed: a REGISTER to [`crate::registrar`]; a new INVITE to a room
//! (`conference.rs`), a user's phones or a number (a two-party call, `call.rs`, with media
//! direct between two desk phones or anchored here when a browser or a trunk is a side;
//! `pstn.rs` for the phone network); an in-dialog request by its dialog (Call-ID and our
//! tag) to its call or leg; a response by its client transaction to the `Owner` that sent
//! it (a trunk's REGISTER answers to the state machine in `registration.rs`); a timer by
//! its `Timer` to the owner it names. Ids are typed (`ids.rs`): a call, an invitation and a
//! leg can never be mistaken for one another.
//!
//! What is routed lands in a state machine without IO that owns its state: a two-party
//! `Call` (`call.rs`), a `Leg` the PBX terminates (`leg.rs`), an `Invitation`
//! (`invite.rs`), a trunk's `Registration` (`registration.rs`). The engine drives it —
//! does what its `poll_output` asks, sets its timer — and keeps only what joins machines:
//! ringing devices, opening media for an answer, transfers.
//!
//! The engine is a back-to-back user agent: every call has a caller leg (we are its UAS)
//! and one or more callee legs (we are their UAC, one per registered device while ringing,
//! the winner once answered). Nothing is forwarded as-is between legs; each leg has its own
//! Call-ID, tags and CSeq space, so a misbehaving phone cannot confuse the other side.
//!
//! Invariants: every map entry that points at a call, leg or invitation (dialogs, client
//! transactions) is removed when its owner is dropped, and an owner is dropped only when
//! none of its transactions can still produce a response we must act on. Timers are never
//! cancelled: one whose owner is gone or whose deadline moved finds nothing to do.

use std::collections::{BinaryHeap, HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use confero_sip::dialog::{Dialog, Local};
use confero_sip::digest;
use confero_sip::message::{response_for, Entropy, Message, Request, Response};
use confero_sip::peek::Peek;
use confero_sip::transaction::{
    ClientTxId, ServerTxId, TimerConfig, TransactionEvent, TransactionLayer,
};
use confero_sip::transport::{Peer, Transmit, Transport};
use confero_sip::{sdp, Method, Name, SipUri, StatusCode};

use crate::config::{self, Snapshot, User};
use crate::ports::PortPool;
use crate::registrar::auth::{self, Authenticator};
use crate::room::Rooms;

mod call;
mod conference;
mod fork;
mod ids;
mod invite;
mod leg;
mod pstn;
mod registration;
mod transfer;
mod trunk;
mod webrtc;
use crate::registrar::{Binding, BindingChange, Registrar};
use call::{Call, Forwarded, MediaKind, Side};
pub use conference::ConferenceParticipant;
use conference::Party;
pub use confero_media::bridge::{LegStats, MediaCommand, MediaEvent, MixId};
use confero_sip::headers::{self, uri_user};
use ids::{ByUser, IdMap, Ids, Owner, Timer};
pub use ids::{CallId, InvitationId, LegId};
use invite::Invitation;
pub use invite::{InvitationInfo, InvitationState, InviteError, MAX_INVITE_TIMEOUT};
use leg::Leg;
use trunk::TrunkLink;
pub use trunk::{RegistrationState, TrunkStatus};

/// Methods we answer; also sent in `Allow`.
const ALLOW: &str =
    "INVITE, ACK, CANCEL, BYE, OPTIONS, INFO, UPDATE, REGISTER, MESSAGE, NOTIFY, REFER";
/// Our `Server` and `User-Agent`: no version, which would tell a scanner which flaws to try.
const USER_AGENT: &str = "Confero";

/// Server transactions beyond which new work is refused with 503: each is a few hundred
/// bytes once answered, and a legitimate load of hundreds of calls and thousands of
/// phones refreshing stays far below. Under the transaction layer's own bound
/// ([`confero_sip::transaction::MAX_KEPT_SERVER_TRANSACTIONS`]), so refusing starts first.
const MAX_TRANSACTIONS: usize = 40_000;

/// A final response to `req` with a To tag of ours (`tag`) and `reason`.
fn final_response(req: &Request, code: u16, reason: &str, tag: &str) -> Response {
    let mut resp = response_for(req, StatusCode::from(code), Some(tag));
    resp.reason = Some(reason.to_owned());
    resp
}

/// Seconds a client refused for overload should wait: spread over 5–20 s so that the
/// refused do not all come back at once.
fn overload_retry_after(entropy: &mut Entropy) -> u64 {
    5 + entropy.next_u64() % 16
}

/// Static settings of the engine (from the command line).
#[derive(Debug, Clone)]
pub struct EngineSettings {
    /// Address put in our Via and Contact headers (and later SDP).
    pub advertised: SocketAddr,
    /// SIP domains served; empty means any.
    pub domains: Vec<String>,
    /// Digest realm.
    pub realm: String,
    /// Secret for stateless nonces; random per process unless given.
    pub nonce_secret: [u8; 32],
    /// How long a nonce is good for (then `stale=true`).
    pub nonce_lifetime: Duration,
    /// How long a call rings before the caller gets 480.
    pub ring_timeout: Duration,
    /// RFC 3261 timers (T1, T2, T4).
    pub timers: TimerConfig,
    /// Where RTP ports for anchored media come from (`--rtp-ports`).
    pub rtp_ports: std::ops::RangeInclusive<u16>,
    /// Holds each RTP pair handed out, passing over those another program holds (the
    /// server binds them); `None` takes every port as free.
    pub port_reserver: Option<std::sync::Arc<dyn crate::ports::PortReserver>>,
    /// Digest algorithms challenged with, in order (`--digest`). Answers with either
    /// algorithm are verified whatever is offered.
    pub digest_algorithms: Vec<digest::Algorithm>,
    /// Calls one user may have at once (each holds an RTP port or two).
    pub max_calls_per_user: usize,
    /// Seeds the engine's tags, branches, Call-IDs and port choice, so that a simulated
    /// run replays exactly; `None` (the server) draws them from the operating system.
    pub seed: Option<u64>,
}

impl EngineSettings {
    /// Defaults suitable for tests and small sites.
    pub fn new(advertised: SocketAddr, nonce_secret: [u8; 32]) -> Self {
        Self {
            advertised,
            domains: Vec::new(),
            realm: "confero".to_owned(),
            nonce_secret,
            nonce_lifetime: Duration::from_secs(120),
            ring_timeout: Duration::from_secs(60),
            timers: TimerConfig::default(),
            rtp_ports: 10000..=20000,
            port_reserver: None,
            digest_algorithms: vec![digest::Algorithm::Md5],
            max_calls_per_user: 8,
            seed: None,
        }
    }
}

/// Something the shell should know about.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EngineEvent {
    /// A registration binding changed: persist it.
    Binding(BindingChange),
    /// The set or state of calls changed (live views refresh).
    CallsChanged,
    /// Someone joined, left, started talking, was muted… in a conference room.
    ConferencesChanged,
    /// A trunk's registration state changed.
    TrunksChanged,
    /// Look up a trunk's host name and answer with [`Engine::set_trunk_addresses`].
    ResolveTrunk {
        /// The trunk's configuration id.
        trunk: i64,
        /// The name to look up.
        host: String,
        /// The port the addresses go with.
        port: u16,
    },
    /// Someone is guessing a room's access code (repeated at most every 10 minutes while
    /// it goes on): tell its administrator.
    CodeGuessing {
        /// The room's id.
        conference_id: i64,
        /// Wrong codes keyed into it in the last hour.
        failures_last_hour: u32,
    },
}

/// What [`Engine::security_stats`] counts.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SecurityStats {
    /// Digest authentication: failures, refusals, replays.
    pub auth: auth::AuthStats,
    /// Access codes: wrong ones, callers told to try later.
    pub codes: crate::room::CodeStats,
    /// New requests refused with 503 under overload.
    pub overload_refusals: u64,
}

/// A call as shown in `GET /api/v1/calls`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CallInfo {
    /// The call's id (unique with invitations' and participants').
    pub id: u64,
    /// Who calls (extension or number).
    pub caller: String,
    /// Who is called.
    pub callee: String,
    /// `ringing`, `answered` or `ended`.
    pub state: &'static str,
    /// When it started (Unix seconds).
    pub started_unix: u64,
    /// When it was answered (Unix seconds).
    pub answered_unix: Option<u64>,
}

/// Why we started a client transaction: tells how to treat its response.
#[derive(Debug, Clone)]
enum ClientPurpose {
    /// One of the owner's forks (a call's, an invitation's, an anchored call's).
    Fork(usize),
    /// A request of one side of a direct call, forwarded to the other.
    Forwarded(Box<Forwarded>),
    /// BYE or CANCEL we sent; the answer changes nothing.
    Fire,
    /// A REGISTER to a provider.
    Register,
}

/// The signalling engine. See the module docs for the run loop.
pub struct Engine {
    settings: EngineSettings,
    start: Instant,
    start_unix: u64,
    config: Arc<Snapshot>,
    tx: TransactionLayer,
    auth: Authenticator,
    registrar: Registrar,
    calls: IdMap<CallId, Call>,
    ids: Ids,
    entropy: Entropy,
    /// (Call-ID, our tag) → call and side.
    dialogs: HashMap<(String, String), (CallId, Side)>,
    client_txs: HashMap<ClientTxId, (Owner, ClientPurpose)>,
    timers: BinaryHeap<std::cmp::Reverse<(Instant, Timer)>>,
    rooms: Rooms,
    conf_legs: IdMap<LegId, Leg>,
    /// The legs (`conf_legs`) and calls (`calls`) each user placed.
    legs_by_user: ByUser<LegId>,
    calls_by_user: ByUser<CallId>,
    /// (Call-ID, our tag) → conference leg.
    conf_dialogs: HashMap<(String, String), LegId>,
    invitations: IdMap<InvitationId, Invitation>,
    trunks: IdMap<i64, TrunkLink>,
    /// Browser INVITEs waiting for the media bridge's WebRTC answer.
    pending_webrtc: IdMap<LegId, webrtc::PendingWebRtc>,
    /// Browsers about to be rung, waiting for the media bridge's WebRTC offer.
    pending_offers: IdMap<LegId, webrtc::PendingOffer>,
    ports: PortPool,
    /// Rooms whose code is being guessed: wrong codes in the last hour, and when (Unix).
    code_alerts: IdMap<i64, (u32, u64)>,
    /// The shell cannot keep up with its input ([`Engine::set_backlogged`]).
    backlogged: bool,
    /// New requests refused with 503 for overload, since start.
    overload_refusals: u64,
    media_out: VecDeque<MediaCommand>,
    transmits: VecDeque<Transmit>,
    events: VecDeque<EngineEvent>,
}

impl Engine {
    /// `now`/`now_unix` name the same moment; later Unix times are derived from instants.
    pub fn new(
        settings: EngineSettings,
        config: Arc<Snapshot>,
        now: Instant,
        now_unix: u64,
    ) -> Self {
        let auth = Authenticator::new(
            settings.realm.clone(),
            settings.nonce_secret,
            settings.nonce_lifetime,
            now,
            now_unix,
        );
        let mut entropy = settings.seed.map_or_else(Entropy::from_os, Entropy::seeded);
        let ports = PortPool::starting_at(settings.rtp_ports.clone(), entropy.next_u64() as u32)
            .with_reserver(settings.port_reserver.clone());
        let mut engine = Self {
            tx: TransactionLayer::new(settings.timers),
            settings,
            start: now,
            start_unix: now_unix,
            config,
            auth,
            registrar: Registrar::new(),
            calls: IdMap::default(),
            ids: Ids::new(),
            entropy,
            dialogs: HashMap::new(),
            client_txs: HashMap::new(),
            timers: BinaryHeap::new(),
            rooms: Rooms::new(),
            conf_legs: IdMap::default(),
            legs_by_user: ByUser::default(),
            calls_by_user: ByUser::default(),
            conf_dialogs: HashMap::new(),
            invitations: IdMap::default(),
            trunks: IdMap::default(),
            pending_webrtc: IdMap::default(),
            pending_offers: IdMap::default(),
            ports,
            code_alerts: IdMap::default(),
            backlogged: false,
            overload_refusals: 0,
            media_out: VecDeque::new(),
            transmits: VecDeque::new(),
            events: VecDeque::new(),
        };
        engine.reconcile_trunks(now);
        engine
    }

    fn unix(&self, now: Instant) -> u64 {
        self.start_unix + now.saturating_duration_since(self.start).as_secs()
    }

    /// The production revision calls are routed by.
    #[must_use]
    pub fn config_revision(&self) -> i64 {
        self.config.revision
    }

    /// Publishes a new production revision. Calls in progress keep going; registrations of
    /// users that no longer exist are dropped.
    pub fn set_config(&mut self, now: Instant, config: Arc<Snapshot>) {
        self.config = config;
        let cfg = self.config.clone();
        for change in self
            .registrar
            .retain_users(|aor| cfg.config.user_by_sip_username(aor).is_some())
        {
            self.events.push_back(EngineEvent::Binding(change));
        }
        self.rooms.handle_config(now, &cfg.config.conferences);
        self.drain_room_commands(now);
        self.reconcile_trunks(now);
    }

    /// Puts back a binding loaded from storage (after a restart).
    pub fn restore_binding(&mut self, binding: Binding) {
        self.registrar.restore(binding);
    }

    /// The location table.
    pub fn registrar(&self) -> &Registrar {
        &self.registrar
    }

    /// The calls user `extension` has going (rooms, anchored and direct calls): one
    /// account may not hold the whole RTP port range.
    fn calls_of_user(&self, extension: &str) -> usize {
        let rooms = self
            .legs_by_user
            .of(extension)
            .filter(|id| self.conf_legs.get(id).is_some_and(|c| c.call.is_none()))
            .count();
        rooms + self.calls_placed_by(extension)
    }

    /// Counters of what attackers tried, since start.
    #[must_use]
    pub fn security_stats(&self) -> SecurityStats {
        SecurityStats {
            auth: self.auth.stats(),
            codes: self.rooms.code_stats(),
            overload_refusals: self.overload_refusals,
        }
    }

    /// Rooms whose access code was being guessed in the last hour: the room, wrong codes
    /// in the hour before the latest alert, and when that alert was raised.
    #[must_use]
    pub fn code_guessing(&self, now_unix: u64) -> Vec<(i64, u32, u64)> {
        let mut v: Vec<_> = self
            .code_alerts
            .iter()
            .filter(|(_, (_, at))| now_unix.saturating_sub(*at) < 3600)
            .map(|(room, (n, at))| (*room, *n, *at))
            .collect();
        v.sort_unstable();
        v
    }

    /// Calls between two parties in progress (direct and anchored).
    pub fn calls(&self) -> Vec<CallInfo> {
        let mut v: Vec<_> = self.call_infos().collect();
        v.sort_by_key(|c| c.id);
        v
    }

    /// The server is stopping: every call and room participant is hung up properly
    /// (BYE when answered, 503 to a caller still ringing, CANCEL to the devices) rather
    /// than left to time out on the phones.
    pub fn hang_up_all(&mut self, now: Instant) {
        let legs: Vec<LegId> = self.conf_legs.keys().copied().collect();
        for leg in legs {
            self.end_conf_leg(now, leg, true);
        }
        self.hang_up_calls(now);
        let invitations: Vec<InvitationId> = self.invitations.keys().copied().collect();
        for id in invitations {
            self.cancel_invitation(now, id);
        }
        self.refuse_pending_webrtc(now);
        self.unregister_trunks(now);
        self.drain_tx_transmits();
    }

    /// Live transactions (for metrics and leak tests).
    pub fn transaction_count(&self) -> usize {
        self.tx.len()
    }

    /// Calls held in memory, ended ones included until their last transaction settles.
    pub fn call_count(&self) -> usize {
        self.calls.len()
    }

    /// A connection closed: WebSocket bindings on it are gone (the phone cannot be reached
    /// any other way), and so are the calls of a browser that talked over it (its tab was
    /// closed: no BYE will ever come, and none can be sent). TCP phones are called back by
    /// opening a new connection.
    pub fn connection_closed(&mut self, now: Instant, conn: confero_sip::transport::ConnId) {
        for change in self.registrar.connection_closed(conn, |b| {
            matches!(b.peer.transport, Transport::Ws | Transport::Wss)
        }) {
            self.events.push_back(EngineEvent::Binding(change));
        }
        let orphaned: Vec<LegId> = self
            .conf_legs
            .iter()
            .filter(|(_, c)| {
                c.dialog.peer.conn == Some(conn)
                    && matches!(c.dialog.peer.transport, Transport::Ws | Transport::Wss)
            })
            .map(|(id, _)| *id)
            .collect();
        for id in orphaned {
            self.end_conf_leg(now, id, false);
        }
        self.drain_tx_transmits();
    }

    /// The shell could not deliver to `peer` (a TCP connection refused, a TLS handshake
    /// failed): requests in flight toward it fail at once with 503 and `why` as the reason,
    /// as RFC 3261 §8.1.3.1 wants for transport errors, instead of timing out 32 s later.
    pub fn handle_unreachable(&mut self, now: Instant, peer: Peer, why: &str) {
        self.tx.handle_transport_error(peer);
        while let Some(ev) = self.tx.poll_event() {
            match ev {
                TransactionEvent::ClientTimeout { tx } => {
                    let unreachable = Response {
                        code: StatusCode::from(503),
                        reason: Some(why.to_owned()),
                        headers: confero_sip::Headers::new(),
                        body: Bytes::new(),
                    };
                    self.on_response(now, tx, unreachable);
                }
                other => self.on_tx_event(now, other),
            }
        }
        self.drain_tx_transmits();
    }

    /// Input: one datagram or one framed stream message from `from`.
    pub fn handle_datagram(&mut self, now: Instant, data: &[u8], from: Peer) {
        if self.overloaded() && self.shed_raw(data, from) {
            return;
        }
        match Message::parse(data) {
            Ok(msg) => {
                self.tx.handle_message(now, msg, from);
                self.drain_tx_events(now);
            }
            Err(err) => {
                if let Some(resp) = err.bad_request_response() {
                    self.tx.send_stateless(Message::Response(resp), from);
                    self.drain_tx_transmits();
                }
            }
        }
    }

    /// Time passes: transactions, registrations, calls, rooms and trunks do what is due.
    pub fn handle_timeout(&mut self, now: Instant) {
        self.tx.handle_timeout(now);
        self.drain_tx_events(now);
        for change in self.registrar.expire(now) {
            self.events.push_back(EngineEvent::Binding(change));
        }
        while let Some(std::cmp::Reverse((at, timer))) = self.timers.peek().copied() {
            if at > now {
                break;
            }
            self.timers.pop();
            match timer {
                Timer::Call(id) => self.call_timers(now, id),
                Timer::Invitation(id) => self.invitation_timers(now, id),
                Timer::Trunk(trunk) => self.trunk_timers(now, trunk),
                Timer::BrowserAnswer(leg) => self.webrtc_timers(now, leg),
                Timer::Leg(leg) => self.conf_leg_timers(now, leg),
            }
        }
        self.rooms.handle_timeout(now);
        self.drain_room_commands(now);
        self.drain_tx_events(now);
    }

    /// The next datagram to send.
    #[must_use]
    pub fn poll_transmit(&mut self) -> Option<Transmit> {
        self.drain_tx_transmits();
        self.transmits.pop_front()
    }

    /// The next thing for the shell to know.
    #[must_use]
    pub fn poll_event(&mut self) -> Option<EngineEvent> {
        self.events.pop_front()
    }

    /// When [`Engine::handle_timeout`] must next be called.
    #[must_use]
    pub fn poll_timeout(&self) -> Option<Instant> {
        [
            self.tx.poll_timeout(),
            self.registrar.next_expiry(),
            self.timers.peek().map(|r| r.0 .0),
            self.rooms.poll_timeout(),
        ]
        .into_iter()
        .flatten()
        .min()
    }

    fn drain_tx_transmits(&mut self) {
        while let Some(t) = self.tx.poll_transmit() {
            self.transmits.push_back(t);
        }
    }

    fn drain_tx_events(&mut self, now: Instant) {
        while let Some(ev) = self.tx.poll_event() {
            self.on_tx_event(now, ev);
        }
        self.drain_tx_transmits();
    }

    fn on_tx_event(&mut self, now: Instant, ev: TransactionEvent) {
        match ev {
            TransactionEvent::Request { tx, request, from } => {
                self.on_request(now, tx, request, from)
            }
            TransactionEvent::Ack { request, from: _ } => self.on_ack(now, &request),
            TransactionEvent::Response { tx, response } => self.on_response(now, tx, response),
            TransactionEvent::StrayResponse { response, from: _ } => {
                self.on_stray_response(&response)
            }
            TransactionEvent::ClientTimeout { tx } => {
                let timeout = Response {
                    code: StatusCode::from(408),
                    reason: Some("Request Timeout".into()),
                    headers: confero_sip::Headers::new(),
                    body: Bytes::new(),
                };
                self.on_response(now, tx, timeout);
            }
            TransactionEvent::ServerTimeout { .. } => {}
        }
    }

    // ----- requests ------------------------------------------------------------------------

    fn respond(&mut self, now: Instant, tx: ServerTxId, req: &Request, code: u16, reason: &str) {
        let resp = final_response(req, code, reason, &self.entropy.tag());
        self.send_response(now, tx, resp);
    }

    /// A refusal with the detail in a Warning header (RFC 3261 §20.43): phones show or log
    /// it, and the administrator reading a trace sees why without our log.
    fn respond_warning(
        &mut self,
        now: Instant,
        tx: ServerTxId,
        req: &Request,
        (code, reason): (u16, &str),
        detail: &str,
    ) {
        let mut resp = final_response(req, code, reason, &self.entropy.tag());
        let warning = warning(self.settings.advertised.ip(), detail);
        resp.headers.insert(Name::WARNING, warning);
        self.send_response(now, tx, resp);
    }

    /// A final answer to someone not known yet (a challenge, a refusal): sent once, no
    /// state kept (see [`TransactionLayer::send_final_and_forget`]).
    fn send_final_and_forget(&mut self, tx: ServerTxId, mut resp: Response) {
        resp.headers.insert(Name::SERVER, USER_AGENT);
        let _ = self.tx.send_final_and_forget(tx, resp);
    }

    fn send_response(&mut self, now: Instant, tx: ServerTxId, mut resp: Response) {
        resp.headers.insert(Name::SERVER, USER_AGENT);
        // The transaction may already be gone (e.g. CANCEL raced the answer): nothing to do.
        let _ = self.tx.send_response(now, tx, resp);
    }

    fn on_request(&mut self, now: Instant, tx: ServerTxId, req: Request, from: Peer) {
        if headers::max_forwards(&req) == 0 && req.method != Method::REGISTER {
            return self.respond(now, tx, &req, 483, "Too Many Hops");
        }
        let in_dialog = req.to_tag().is_some();
        if !in_dialog
            && self.overloaded()
            && !self.served_under_overload(&req.method.to_string(), from)
        {
            return self.shed(tx, &req);
        }
        match req.method {
            Method::REGISTER => self.on_register(now, tx, &req, from),
            Method::CANCEL => self.on_cancel(now, tx, &req),
            Method::INVITE if !in_dialog => self.on_new_invite(now, tx, req, from),
            Method::OPTIONS if !in_dialog => self.answer_options(tx, &req),
            _ if in_dialog => self.on_in_dialog(now, tx, req),
            _ => {
                let mut resp = response_for(&req, StatusCode::from(405), Some(&self.entropy.tag()));
                resp.reason = Some("Method Not Allowed".into());
                resp.headers.insert(Name::ALLOW, ALLOW);
                self.send_response(now, tx, resp);
            }
        }
    }

    /// Whether new work should be refused: the shell reports a backlog of datagrams, or
    /// the transaction table is past its bound.
    fn overloaded(&self) -> bool {
        self.backlogged || self.tx.len() >= MAX_TRANSACTIONS
    }

    /// What is served even under overload besides in-dialog requests (calls in progress):
    /// refreshes from addresses that hold a registration, and OPTIONS (monitoring and
    /// keep-alives, answered without state).
    fn served_under_overload(&self, method: &str, from: Peer) -> bool {
        match method {
            "REGISTER" => self.registrar.knows_source(from.addr),
            "OPTIONS" | "CANCEL" | "ACK" => true,
            _ => false,
        }
    }

    /// Under overload, refuses a new request from its raw bytes, before the parser (the
    /// costly part) sees it. Returns whether it did.
    fn shed_raw(&mut self, data: &[u8], from: Peer) -> bool {
        let Some(peek) = Peek::of(data) else {
            return false;
        };
        if peek.in_dialog || self.served_under_overload(peek.method, from) {
            return false;
        }
        self.overload_refusals += 1;
        let extra = format!(
            "Retry-After: {}\r\nServer: {USER_AGENT}\r\n",
            overload_retry_after(&mut self.entropy)
        );
        let bytes = peek.refusal(503, "Service Unavailable", &self.entropy.tag(), &extra);
        self.transmits.push_back(Transmit {
            peer: from,
            data: Bytes::from(bytes),
        });
        true
    }

    /// `503 Service Unavailable` with a `Retry-After` spread over 5–20 s (so refused
    /// clients do not all come back at once), sent once with no state kept; for what
    /// [`Engine::shed_raw`] could not judge from the raw bytes.
    fn shed(&mut self, tx: ServerTxId, req: &Request) {
        self.overload_refusals += 1;
        let mut resp = final_response(req, 503, "Service Unavailable", &self.entropy.tag());
        resp.headers.insert(
            Name::RETRY_AFTER,
            overload_retry_after(&mut self.entropy).to_string(),
        );
        self.send_final_and_forget(tx, resp);
    }

    /// The shell's view of its input: `true` while datagrams wait faster than they are
    /// taken (see the module documentation of the SIP shell).
    pub fn set_backlogged(&mut self, backlogged: bool) {
        self.backlogged = backlogged;
    }

    /// OPTIONS is answered without state: it is what monitors and keep-alives send, and
    /// what a flood is made of.
    fn answer_options(&mut self, tx: ServerTxId, req: &Request) {
        let tag = req.to_tag().unwrap_or_else(|| self.entropy.tag());
        let mut resp = response_for(req, StatusCode::from(200), Some(&tag));
        resp.headers.insert(Name::ALLOW, ALLOW);
        resp.headers.insert(Name::ACCEPT, "application/sdp");
        self.send_final_and_forget(tx, resp);
    }

    /// Whether `host` is one of ours (or any host, when no domain is configured).
    fn serves_domain(&self, host: &str) -> bool {
        self.settings.domains.is_empty()
            || self
                .settings
                .domains
                .iter()
                .any(|d| d.eq_ignore_ascii_case(host))
            || host == self.settings.advertised.ip().to_string()
    }

    /// The domain we write in From/To of calls we place.
    fn domain(&self) -> String {
        self.settings
            .domains
            .first()
            .cloned()
            .unwrap_or_else(|| self.settings.advertised.ip().to_string())
    }

    /// Digest authentication of `req` (see [`crate::registrar::auth`]). Answers 401/407 (or 403
    /// while its source or username is locked for wrong passwords) itself and returns
    /// `None` when the request may not go on.
    fn authenticate(
        &mut self,
        now: Instant,
        tx: ServerTxId,
        req: &Request,
        from: Peer,
        proxy: bool,
    ) -> Option<User> {
        let cfg = self.config.clone();
        let unix = self.unix(now);
        let outcome = self
            .auth
            .authenticate(now, unix, req, from.addr, proxy, |name| {
                cfg.config
                    .user_by_sip_username(name)
                    .map(|u| u.sip_password.as_str())
            });
        let (nonce, stale) = match outcome {
            auth::Outcome::Authenticated(name) => {
                return cfg.config.user_by_sip_username(&name).cloned();
            }
            auth::Outcome::Refused => {
                let resp =
                    final_response(req, 403, "Too Many Failed Attempts", &self.entropy.tag());
                self.send_final_and_forget(tx, resp);
                return None;
            }
            auth::Outcome::Challenge { nonce, stale } => (nonce, stale),
        };
        let (code, reason, header) = if proxy {
            (
                407,
                "Proxy Authentication Required",
                Name::PROXY_AUTHENTICATE,
            )
        } else {
            (401, "Unauthorized", Name::WWW_AUTHENTICATE)
        };
        let mut resp = final_response(req, code, reason, &self.entropy.tag());
        for challenge in self
            .auth
            .challenges(&nonce, stale, &self.settings.digest_algorithms)
        {
            resp.headers.insert(header.clone(), challenge);
        }
        self.send_final_and_forget(tx, resp);
        None
    }

    fn on_register(&mut self, now: Instant, tx: ServerTxId, req: &Request, from: Peer) {
        let Some(to) = headers::from_to(&req.headers, Name::TO) else {
            return self.respond(now, tx, req, 400, "Bad To Header");
        };
        if !self.serves_domain(&headers::uri_host(&to.uri.uri)) {
            return self.respond(now, tx, req, 404, "Domain Not Served");
        }
        let Some(user) = self.authenticate(now, tx, req, from, false) else {
            return;
        };
        // The credentials must be the address of record's (one user cannot register for
        // another).
        let to_user = uri_user(&to.uri.uri).unwrap_or_default();
        if to_user != user.sip_username && to_user != user.extension {
            return self.respond(now, tx, req, 403, "Credentials Do Not Match The AOR");
        }
        let unix = self.unix(now);
        let tag = self.entropy.tag();
        let (resp, changes) = self.registrar.register(now, unix, req, &user, from, &tag);
        for c in changes {
            self.events.push_back(EngineEvent::Binding(c));
        }
        self.send_response(now, tx, resp);
    }

    // ----- calls ---------------------------------------------------------------------------

    fn on_new_invite(&mut self, now: Instant, tx: ServerTxId, req: Request, from: Peer) {
        let trying = |engine: &mut Engine| {
            let mut trying = response_for(&req, StatusCode::from(100), None);
            trying.reason = Some("Trying".into());
            engine.send_response(now, tx, trying);
        };
        if let Some(trunk) = self.trunk_of_request(&req, from) {
            trying(self);
            return self.on_trunk_invite(now, tx, req, from, trunk);
        }
        // Strangers get one answer and no 100 before it: a spoofed INVITE must not make
        // the PBX send a victim more than it received.
        if !self.serves_domain(&headers::uri_host(&req.uri)) {
            let resp = final_response(&req, 404, "Domain Not Served", &self.entropy.tag());
            return self.send_final_and_forget(tx, resp);
        }
        let Some(caller) = self.authenticate(now, tx, &req, from, true) else {
            return;
        };
        let limit = self.settings.max_calls_per_user;
        if self.calls_of_user(&caller.extension) >= limit {
            tracing::warn!(user = %caller.sip_username, limit, "call refused: too many calls at once");
            return self.respond_warning(
                now,
                tx,
                &req,
                (403, "Too Many Calls"),
                &format!("at most {limit} calls at once per user"),
            );
        }
        trying(self);
        let dialled = uri_user(&req.uri).unwrap_or_default();
        let cfg = self.config.clone();
        let callee = cfg
            .config
            .user_by_extension(&dialled)
            .or_else(|| cfg.config.user_by_sip_username(&dialled));
        let Some(callee) = callee else {
            if let Some(conference) = cfg.config.conference_by_extension(&dialled) {
                let party = Party::user(&caller);
                return self.answer_conference(now, tx, req, from, party, conference.clone());
            }
            if config::number_digits(&dialled).is_some() {
                return self.call_out(now, tx, req, from, &caller, &dialled);
            }
            return self.respond(now, tx, &req, 404, "Not Found");
        };
        // A browser on either side cannot exchange media with a desk phone directly
        // (DTLS-SRTP against plain RTP): the PBX anchors and, if need be, transcodes.
        let caller_is_browser = sdp::parse_audio(&req.body).is_ok_and(|o| o.is_webrtc());
        let callee_has_browser = self
            .registrar
            .contacts_of(&callee.sip_username)
            .any(webrtc::is_browser);
        let kind = if caller_is_browser || callee_has_browser {
            MediaKind::Anchored
        } else {
            MediaKind::Direct
        };
        let callee = callee.clone();
        self.ring_user(now, tx, req, from, Party::user(&caller), &callee, kind);
    }

    fn on_cancel(&mut self, now: Instant, tx: ServerTxId, cancel: &Request) {
        let Some(invite_tx) = self.tx.invite_tx_for_cancel(cancel) else {
            return self.respond(now, tx, cancel, 481, "Call/Transaction Does Not Exist");
        };
        let call = self.call_of_invite(invite_tx);
        let tag = call.as_ref().map(|(_, tag)| tag.as_str());
        let ok = response_for(cancel, StatusCode::from(200), tag);
        self.send_response(now, tx, ok);
        if let Some((id, _)) = call {
            return self.fail_call(now, id, 487, "Request Terminated");
        }
        if self.webrtc_cancelled(now, invite_tx) {
            return;
        }
        // The INVITE has not reached a call yet (e.g. it was being challenged): end it.
        if let Some(invite) = self.tx.server_request(invite_tx).cloned() {
            self.respond(now, invite_tx, &invite, 487, "Request Terminated");
        }
    }

    /// Sends a request whose answers go to `owner` for `purpose`.
    fn send_owned(
        &mut self,
        now: Instant,
        owner: Owner,
        purpose: ClientPurpose,
        req: Request,
        peer: Peer,
    ) -> ClientTxId {
        let tx = self.tx.send_request(now, req, peer);
        self.client_txs.insert(tx, (owner, purpose));
        tx
    }

    fn on_response(&mut self, now: Instant, tx: ClientTxId, resp: Response) {
        let code = resp.code.into_u16();
        let Some((owner, purpose)) = self.client_txs.get(&tx).cloned() else {
            return;
        };
        if code >= 200 {
            self.client_txs.remove(&tx);
        }
        match (owner, purpose) {
            (_, ClientPurpose::Fire) => {}
            (Owner::Call(id), ClientPurpose::Fork(i)) => self.on_call_response(now, id, i, resp),
            (Owner::Call(id), ClientPurpose::Forwarded(fwd)) => {
                self.on_forwarded_response(now, id, *fwd, resp)
            }
            (Owner::Invitation(id), ClientPurpose::Fork(i)) => {
                self.on_invitation_response(now, id, i, resp)
            }
            (Owner::Trunk(trunk), ClientPurpose::Register) => {
                self.on_trunk_register_response(now, trunk, resp)
            }
            (owner, purpose) => {
                tracing::error!(
                    ?owner,
                    ?purpose,
                    "a response for a transaction of no such kind"
                );
            }
        }
    }

    /// A dialog-creating INVITE from the PBX: `from` and `to` are (display name, user) at
    /// our domain, with a fresh tag, Call-ID and branch.
    fn new_invite(
        &mut self,
        uri: SipUri,
        transport: Transport,
        from: (&str, &str),
        to: (&str, &str),
        max_forwards: u32,
    ) -> Request {
        let domain = self.domain();
        let mut invite = Request::new(Method::INVITE, uri);
        let h = &mut invite.headers;
        h.insert(
            Name::VIA,
            local(&self.settings).via(transport, &mut self.entropy),
        );
        h.insert(Name::MAX_FORWARDS, max_forwards.to_string());
        h.insert(
            Name::FROM,
            format!(
                "{} <sip:{}@{}>;tag={}",
                quoted(from.0),
                from.1,
                domain,
                self.entropy.tag()
            ),
        );
        h.insert(
            Name::TO,
            format!("{} <sip:{}@{}>", quoted(to.0), to.1, domain),
        );
        h.insert(Name::CALL_ID, self.entropy.call_id(&domain));
        h.insert(Name::CSEQ, "1 INVITE");
        h.insert(Name::CONTACT, local(&self.settings).contact(transport));
        h.insert(Name::ALLOW, ALLOW);
        h.insert(Name::USER_AGENT, USER_AGENT);
        invite
    }

    fn on_ack(&mut self, _now: Instant, ack: &Request) {
        let (Some(call_id), Some(tag)) = (ack.call_id(), ack.to_tag()) else {
            return;
        };
        let key = (call_id, tag);
        if let Some(&leg) = self.conf_dialogs.get(&key) {
            return self.conf_ack(leg, ack);
        }
        let (call_id, tag) = key;
        let Some(&(id, side)) = self.dialogs.get(&(call_id, tag)) else {
            return;
        };
        if let Some(leg) = self.calls.get_mut(&id).and_then(|c| c.leg_mut(side)) {
            ack_clears(leg, ack);
        }
    }

    fn on_stray_response(&mut self, resp: &Response) {
        // A retransmitted 2xx to one of our INVITEs: our ACK got lost, send it again.
        if resp.code.into_u16() / 100 != 2 {
            return;
        }
        let (Some(call_id), Some(tag)) = (resp.call_id(), resp.from_tag()) else {
            return;
        };
        if let Some(leg) = self
            .conf_dialogs
            .get(&(call_id.clone(), tag.clone()))
            .and_then(|id| self.conf_legs.get(id))
        {
            if let Some(ack) = &leg.dialog.last_ack {
                self.transmits.push_back(Transmit {
                    peer: leg.dialog.peer,
                    data: ack.to_bytes(),
                });
            }
            return;
        }
        let Some(&(id, side)) = self.dialogs.get(&(call_id, tag)) else {
            return;
        };
        if let Some(leg) = self.calls.get(&id).and_then(|c| c.leg(side)) {
            if let Some(ack) = &leg.last_ack {
                self.transmits.push_back(Transmit {
                    peer: leg.peer,
                    data: ack.to_bytes(),
                });
            }
        }
    }

    fn on_in_dialog(&mut self, now: Instant, tx: ServerTxId, req: Request) {
        let (Some(call_id), Some(tag)) = (req.call_id(), req.to_tag()) else {
            return self.respond(now, tx, &req, 400, "Bad Request");
        };
        if let Some(&leg) = self.conf_dialogs.get(&(call_id.clone(), tag.clone())) {
            return self.conf_in_dialog(now, tx, req, leg);
        }
        let Some(&(id, side)) = self.dialogs.get(&(call_id, tag.clone())) else {
            return self.respond(now, tx, &req, 481, "Call/Transaction Does Not Exist");
        };
        self.call_in_dialog(now, tx, req, id, side);
    }
}

fn quoted(name: &str) -> String {
    let clean: String = name
        .chars()
        .filter(|c| *c != '"' && *c != '\\' && !c.is_control())
        .collect();
    format!("\"{clean}\"")
}

fn copy_body(from: &Request, to: &mut Request) {
    if from.body.is_empty() {
        return;
    }
    if let Some(ct) = headers::first(&from.headers, &Name::CONTENT_TYPE) {
        to.headers.insert(Name::CONTENT_TYPE, ct);
    }
    to.body = from.body.clone();
}

fn copy_response_body(from: &Response, to: &mut Response) {
    if from.body.is_empty() {
        return;
    }
    if let Some(ct) = headers::first(&from.headers, &Name::CONTENT_TYPE) {
        to.headers.insert(Name::CONTENT_TYPE, ct);
    }
    to.body = from.body.clone();
}

/// What we write about ourselves in the requests we send.
fn local(settings: &EngineSettings) -> Local {
    Local {
        advertised: settings.advertised,
        user_agent: USER_AGENT,
    }
}

/// Where to send requests for a registered device. Over UDP: the address the REGISTER came
/// from (works through NAT). Over TCP: the same connection while it lives; the IO shell
/// falls back to the Contact's address when it has closed (RFC 3261 §18.1.1), so that is
/// the address we name.
fn binding_peer(b: &Binding) -> Peer {
    if b.peer.transport != Transport::Tcp {
        return b.peer;
    }
    let Ok(uri) = b.contact.parse::<SipUri>() else {
        return b.peer;
    };
    match uri.host_port.ip() {
        Some(ip) => Peer {
            addr: SocketAddr::new(ip, uri.host_port.port.unwrap_or(5060)),
            ..b.peer
        },
        None => b.peer,
    }
}

/// An ACK ends the retransmission of the 2xx it acknowledges — the one with the same CSeq
/// number — and no other (a late duplicate ACK of an earlier INVITE must not silence the
/// 2xx of a re-INVITE).
/// A Warning header's value (RFC 3261 §20.43) carrying `detail`, made safe to quote.
fn warning(ip: std::net::IpAddr, detail: &str) -> String {
    let text: String = detail
        .chars()
        .filter(|c| !c.is_control() && *c != '"' && *c != '\\')
        .take(200)
        .collect();
    format!("399 {ip} \"{text}\"")
}

fn ack_clears(leg: &mut Dialog, ack: &Request) {
    let acked = ack.cseq().map(|(n, _)| n);
    let pending = leg
        .unacked_2xx
        .as_ref()
        .and_then(|u| u.response.cseq().map(|(n, _)| n));
    if acked.is_some() && acked == pending {
        leg.unacked_2xx = None;
    }
}
