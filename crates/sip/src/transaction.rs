//! The transaction layer of RFC 3261 §17: the four state machines and their timers A–K.
//!
//! A [`TransactionLayer`] sits between the transport (the IO shell) and the transaction
//! user (dialogs, registrar, call logic). It absorbs retransmissions in both directions,
//! retransmits over UDP, ACKs non-2xx finals to our INVITEs, and times transactions out,
//! so the TU sees each request once and each response once.
//!
//! States, per transaction kind:
//! - INVITE client: Calling → Proceeding → Completed (non-2xx, Timer D) | ended (2xx,
//!   delivered; retransmitted 2xx then come out as [`TransactionEvent::StrayResponse`]
//!   so the TU can re-ACK them).
//! - non-INVITE client: Trying → Proceeding → Completed (Timer K).
//! - INVITE server: Proceeding → Completed (non-2xx, Timers G/H) → Confirmed (Timer I) |
//!   Accepted (2xx, Timer L of RFC 6026: INVITE retransmissions are absorbed, ACKs reach
//!   the TU as [`TransactionEvent::Ack`], further 2xx from the TU are passed through).
//! - non-INVITE server: Trying → Proceeding → Completed (Timer J).
//!
//! Two safety nets beyond RFC 3261 keep the layer bounded when a peer or the TU goes
//! silent: an INVITE client transaction in Proceeding ends with
//! [`TransactionEvent::ClientTimeout`] after [`PROCEEDING_TIMEOUT`] without any response
//! (like a proxy's Timer C), and a non-INVITE server transaction whose TU never answers is
//! dropped after 64·T1, when the client has given up anyway (its Timer F).

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, VecDeque};
use std::time::{Duration, Instant};

use bytes::Bytes;
use bytesstr::BytesStr;
use ezk_sip_types::print::AppendCtx;
use ezk_sip_types::{Method, Name, StatusCode};

use crate::message::{hop_request, response_for, split_first_via, Message, Request, Response};
use crate::transport::{Peer, Transmit};

/// How long an INVITE client transaction waits in Proceeding for any further response.
pub const PROCEEDING_TIMEOUT: Duration = Duration::from_secs(180);

/// How long the INVITE server transaction waits for the TU's first response before it
/// sends 100 Trying itself (RFC 3261 §17.2.1).
pub const TRYING_DELAY: Duration = Duration::from_millis(200);

/// The RFC 3261 timer base values.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TimerConfig {
    /// RTT estimate: first retransmit interval; 64·T1 is the transaction timeout.
    pub t1: Duration,
    /// Cap of the retransmit interval for non-INVITE requests and INVITE responses.
    pub t2: Duration,
    /// How long a message may stay in the network (Timers I and K).
    pub t4: Duration,
}

impl Default for TimerConfig {
    fn default() -> Self {
        TimerConfig {
            t1: Duration::from_millis(500),
            t2: Duration::from_secs(4),
            t4: Duration::from_secs(5),
        }
    }
}

impl TimerConfig {
    fn t1x64(&self) -> Duration {
        self.t1.saturating_mul(64)
    }
}

/// Names a client transaction (a request we sent).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ClientTxId(u64);

/// Names a server transaction (a request we received).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ServerTxId(u64);

/// Misuse of the transaction layer by the TU.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum TransactionError {
    /// The server transaction ended (timed out, or completed and cleaned up).
    #[error("no such server transaction")]
    NoSuchTransaction,
    /// The transaction already sent its final response.
    #[error("a final response was already sent on this transaction")]
    FinalAlreadySent,
    /// Only status codes 100–699 can be sent.
    #[error("status code {0} cannot be sent")]
    InvalidStatusCode(u16),
}

/// What the transaction layer tells the TU.
#[derive(Clone, Debug)]
pub enum TransactionEvent {
    /// A new request for the TU (a new server transaction; never ACK).
    Request {
        /// The server transaction to respond on.
        tx: ServerTxId,
        /// The request, top Via stamped with `received`/`rport`.
        request: Request,
        /// Where it came from.
        from: Peer,
    },
    /// An ACK that matched no INVITE server transaction in Completed state (the ACK for a
    /// 2xx): the TU/dialog takes it.
    Ack {
        /// The ACK.
        request: Request,
        /// Where it came from.
        from: Peer,
    },
    /// A response on a client transaction (every provisional; the final once). Non-2xx
    /// finals to INVITE are already ACKed by the layer (§17.1.1.3).
    Response {
        /// The client transaction.
        tx: ClientTxId,
        /// The response.
        response: Response,
    },
    /// A response that matched no client transaction (e.g. a 2xx retransmission).
    StrayResponse {
        /// The response.
        response: Response,
        /// Where it came from.
        from: Peer,
    },
    /// Timer B/F fired (or a transport error): the TU treats it as 408.
    ClientTimeout {
        /// The client transaction.
        tx: ClientTxId,
    },
    /// Timer H fired: no ACK came for a final response to INVITE.
    ServerTimeout {
        /// The server transaction.
        tx: ServerTxId,
    },
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct ClientKey {
    branch: String,
    method: Method,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct ServerKey {
    branch: String,
    sent_by: String,
    method: Method,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum ClientState {
    /// Calling (INVITE) or Trying (non-INVITE).
    Initial,
    Proceeding,
    Completed,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum ServerState {
    /// Non-INVITE only: no response yet.
    Trying,
    Proceeding,
    Completed,
    Confirmed,
    /// INVITE only, RFC 6026: a 2xx was sent.
    Accepted,
}

/// What happens when a transaction's deadline passes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Expiry {
    /// Timers B, F, H (and the safety nets that report): tell the TU.
    Timeout,
    /// Timers D, K, I, J, L: the transaction just ends.
    Cleanup,
}

#[derive(Clone, Copy, Debug)]
struct Retransmit {
    at: Instant,
    interval: Duration,
}

struct ClientTx {
    key: Option<ClientKey>,
    request: Request,
    data: Bytes,
    to: Peer,
    invite: bool,
    state: ClientState,
    retransmit: Option<Retransmit>,
    deadline: Option<(Instant, Expiry)>,
    ack: Option<Bytes>,
}

struct ServerTx {
    key: Option<ServerKey>,
    /// Until the final response: a finished transaction keeps only what absorbing
    /// retransmissions needs (its key and response bytes), so a flood of requests costs
    /// little memory for the 32 s they are remembered.
    request: Option<Request>,
    from: Peer,
    invite: bool,
    state: ServerState,
    last_response: Option<Bytes>,
    retransmit: Option<Retransmit>,
    deadline: Option<(Instant, Expiry)>,
    trying_at: Option<Instant>,
}

/// Server transactions kept at most to absorb retransmissions after their answer (each a
/// few hundred bytes: key and response); beyond, answered non-INVITE transactions end at
/// once, so memory stays bounded whatever the flood.
pub const MAX_KEPT_SERVER_TRANSACTIONS: usize = 50_000;

/// The RFC 3261 §17 transaction layer. See the crate documentation for the run loop.
pub struct TransactionLayer {
    config: TimerConfig,
    next_id: u64,
    clients: HashMap<ClientTxId, ClientTx>,
    client_index: HashMap<ClientKey, ClientTxId>,
    servers: HashMap<ServerTxId, ServerTx>,
    server_index: HashMap<ServerKey, ServerTxId>,
    /// Pending timer instants, earliest first. Entries go stale when a transaction's timer
    /// moves or it ends; [`TransactionLayer::handle_timeout`] re-checks each popped one, so
    /// a stale entry costs one spurious look, while finding the next timer stays
    /// O(log n) instead of a scan of every live transaction on every packet.
    timers: BinaryHeap<Reverse<(Instant, TimerRef)>>,
    transmits: VecDeque<Transmit>,
    events: VecDeque<TransactionEvent>,
}

/// Which transaction a heap entry is for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum TimerRef {
    Client(u64),
    Server(u64),
}

fn server_key(req: &Request) -> Option<ServerKey> {
    let via = req.top_via()?;
    let branch = via.params.get_val("branch")?.as_str().to_owned();
    let sent_by = via
        .sent_by
        .default_print_ctx()
        .to_string()
        .to_ascii_lowercase();
    let method = if req.method == Method::ACK {
        Method::INVITE
    } else {
        req.method.clone()
    };
    Some(ServerKey {
        branch,
        sent_by,
        method,
    })
}

/// Stamps the top Via with `received` (RFC 3261 §18.2.1) and fills a bare `rport`
/// (RFC 3581), editing the text so every other parameter stays byte-for-byte as sent.
fn stamp_via(req: &mut Request, from: &Peer) {
    let Some(via) = req.top_via() else {
        return;
    };
    let source = from.addr.ip().to_canonical();
    let wants_rport = via.params.get("rport").is_some_and(|p| p.value.is_none());
    let needs_received =
        wants_rport || via.sent_by.ip().map(|ip| ip.to_canonical()) != Some(source);
    if !needs_received && !wants_rport {
        return;
    }
    let Some(mut values) = req.headers.remove(&Name::VIA) else {
        return;
    };
    let Some(first) = values.first().map(|v| v.as_str().to_owned()) else {
        return;
    };
    // Later Vias on the same line are kept verbatim.
    let (top, rest) = split_first_via(&first);
    let mut out = String::with_capacity(top.len() + 48);
    for (i, segment) in top.split(';').enumerate() {
        let name = segment.split('=').next().unwrap_or_default().trim();
        if i > 0 && name.eq_ignore_ascii_case("received") {
            continue;
        }
        if i > 0 {
            out.push(';');
        }
        if i > 0 && name.eq_ignore_ascii_case("rport") && wants_rport {
            out.push_str(&format!("rport={}", from.addr.port()));
        } else {
            out.push_str(segment.trim_end());
        }
    }
    if needs_received {
        out.push_str(&format!(";received={source}"));
    }
    out.push_str(rest);
    if let Some(slot) = values.first_mut() {
        *slot = BytesStr::from(out);
    }
    let mut values = values.into_iter();
    if let Some(first) = values.next() {
        req.headers.insert_front(Name::VIA, first);
    }
    for v in values {
        req.headers.insert(Name::VIA, v);
    }
}

fn is_final(code: StatusCode) -> bool {
    code.into_u16() >= 200
}

fn is_2xx(code: StatusCode) -> bool {
    (200..300).contains(&code.into_u16())
}

impl TransactionLayer {
    /// An empty layer.
    pub fn new(config: TimerConfig) -> Self {
        TransactionLayer {
            config,
            next_id: 0,
            clients: HashMap::new(),
            client_index: HashMap::new(),
            servers: HashMap::new(),
            server_index: HashMap::new(),
            timers: BinaryHeap::new(),
            transmits: VecDeque::new(),
            events: VecDeque::new(),
        }
    }

    fn next_id(&mut self) -> u64 {
        self.next_id += 1;
        self.next_id
    }

    fn transmit(&mut self, peer: Peer, data: Bytes) {
        self.transmits.push_back(Transmit { peer, data });
    }

    /// Input: a parsed message from the network.
    ///
    /// For requests the top Via gets `received=` (when the source IP differs from the
    /// sent-by host, or `rport` was asked for) and a bare `rport` gets the source port
    /// (RFC 3581); responses are sent to `from` (same connection for streams) in any case.
    /// Retransmitted requests are absorbed (the last response is re-sent). Requests match
    /// per §17.2.3 (branch + sent-by + method; ACK matches the INVITE, CANCEL does not).
    pub fn handle_message(&mut self, now: Instant, msg: Message, from: Peer) {
        match msg {
            Message::Request(mut req) => {
                stamp_via(&mut req, &from);
                self.handle_request(now, req, from);
            }
            Message::Response(resp) => {
                let id = client_key(&resp).and_then(|k| self.client_index.get(&k).copied());
                self.handle_response(now, resp, from);
                if let Some(id) = id {
                    self.schedule_client(id);
                }
            }
        }
    }

    fn schedule_client(&mut self, id: ClientTxId) {
        if let Some(at) = self.clients.get(&id).and_then(next_client_timer) {
            self.timers.push(Reverse((at, TimerRef::Client(id.0))));
        }
    }

    fn schedule_server(&mut self, id: ServerTxId) {
        if let Some(at) = self.servers.get(&id).and_then(next_server_timer) {
            self.timers.push(Reverse((at, TimerRef::Server(id.0))));
        }
    }

    fn handle_request(&mut self, now: Instant, req: Request, from: Peer) {
        let key = server_key(&req);
        let existing = key.as_ref().and_then(|k| self.server_index.get(k)).copied();

        if req.method == Method::ACK {
            let Some(id) = existing else {
                self.events
                    .push_back(TransactionEvent::Ack { request: req, from });
                return;
            };
            let Some(tx) = self.servers.get_mut(&id) else {
                return;
            };
            match tx.state {
                ServerState::Completed => {
                    tx.state = ServerState::Confirmed;
                    tx.retransmit = None;
                    if from.transport.is_reliable() || tx.from.transport.is_reliable() {
                        self.remove_server(id);
                    } else {
                        tx.deadline = Some((now + self.config.t4, Expiry::Cleanup));
                    }
                }
                // An ACK reusing the INVITE branch for a 2xx (RFC 2543 style) is still
                // the dialog's business.
                ServerState::Accepted => self
                    .events
                    .push_back(TransactionEvent::Ack { request: req, from }),
                _ => {}
            }
            self.schedule_server(id);
            return;
        }

        if let Some(id) = existing {
            let mut resend = None;
            let mut trying = false;
            if let Some(tx) = self.servers.get_mut(&id) {
                match tx.state {
                    ServerState::Proceeding | ServerState::Completed => {
                        resend = tx.last_response.clone();
                        if resend.is_none() && tx.invite {
                            // The client is retransmitting and has heard nothing yet: tell
                            // it we are working on it now rather than at the 200 ms mark.
                            trying = true;
                            tx.trying_at = None;
                        }
                    }
                    ServerState::Trying | ServerState::Confirmed | ServerState::Accepted => {}
                }
                let peer = tx.from;
                if let (true, Some(request)) = (trying, &tx.request) {
                    let resp = response_for(request, StatusCode::TRYING, None);
                    let data = resp.to_bytes();
                    tx.last_response = Some(data.clone());
                    resend = Some(data);
                }
                if let Some(data) = resend {
                    self.transmit(peer, data);
                }
            }
            return;
        }

        let id = ServerTxId(self.next_id());
        let invite = req.method == Method::INVITE;
        let tx = ServerTx {
            key: key.clone(),
            request: Some(req.clone()),
            from,
            invite,
            state: if invite {
                ServerState::Proceeding
            } else {
                ServerState::Trying
            },
            last_response: None,
            retransmit: None,
            deadline: if invite {
                None
            } else {
                Some((now + self.config.t1x64(), Expiry::Cleanup))
            },
            trying_at: invite.then(|| now + TRYING_DELAY),
        };
        self.servers.insert(id, tx);
        if let Some(key) = key {
            self.server_index.insert(key, id);
        }
        self.schedule_server(id);
        self.events.push_back(TransactionEvent::Request {
            tx: id,
            request: req,
            from,
        });
    }

    fn handle_response(&mut self, now: Instant, resp: Response, from: Peer) {
        let key = client_key(&resp);
        let id = key.and_then(|k| self.client_index.get(&k)).copied();
        let Some(id) = id else {
            self.events.push_back(TransactionEvent::StrayResponse {
                response: resp,
                from,
            });
            return;
        };
        let Some(tx) = self.clients.get_mut(&id) else {
            self.events.push_back(TransactionEvent::StrayResponse {
                response: resp,
                from,
            });
            return;
        };
        let code = resp.code;
        let reliable = tx.to.transport.is_reliable();
        let t1x64 = self.config.t1x64();

        if tx.invite {
            match (tx.state, is_final(code), is_2xx(code)) {
                (ClientState::Initial | ClientState::Proceeding, false, _) => {
                    tx.state = ClientState::Proceeding;
                    tx.retransmit = None;
                    tx.deadline = Some((now + PROCEEDING_TIMEOUT, Expiry::Timeout));
                    self.events.push_back(TransactionEvent::Response {
                        tx: id,
                        response: resp,
                    });
                }
                (ClientState::Initial | ClientState::Proceeding, true, true) => {
                    self.events.push_back(TransactionEvent::Response {
                        tx: id,
                        response: resp,
                    });
                    self.remove_client(id);
                }
                (ClientState::Initial | ClientState::Proceeding, true, false) => {
                    let to = resp.headers.get_raw(&Name::TO).next();
                    let ack = hop_request(&tx.request, Method::ACK, to).to_bytes();
                    let peer = tx.to;
                    tx.state = ClientState::Completed;
                    tx.retransmit = None;
                    tx.ack = Some(ack.clone());
                    tx.deadline = Some((now + t1x64, Expiry::Cleanup));
                    self.transmit(peer, ack);
                    self.events.push_back(TransactionEvent::Response {
                        tx: id,
                        response: resp,
                    });
                    if reliable {
                        self.remove_client(id);
                    }
                }
                (ClientState::Completed, true, false) => {
                    let peer = tx.to;
                    if let Some(ack) = tx.ack.clone() {
                        self.transmit(peer, ack);
                    }
                }
                // A 2xx after a non-2xx final (another fork): the dialog layer decides.
                (ClientState::Completed, true, true) => {
                    self.events.push_back(TransactionEvent::StrayResponse {
                        response: resp,
                        from,
                    })
                }
                (ClientState::Completed, false, _) => {}
            }
        } else {
            match (tx.state, is_final(code)) {
                (ClientState::Initial | ClientState::Proceeding, false) => {
                    tx.state = ClientState::Proceeding;
                    self.events.push_back(TransactionEvent::Response {
                        tx: id,
                        response: resp,
                    });
                }
                (ClientState::Initial | ClientState::Proceeding, true) => {
                    tx.state = ClientState::Completed;
                    tx.retransmit = None;
                    tx.deadline = Some((now + self.config.t4, Expiry::Cleanup));
                    self.events.push_back(TransactionEvent::Response {
                        tx: id,
                        response: resp,
                    });
                    if reliable {
                        self.remove_client(id);
                    }
                }
                (ClientState::Completed, _) => {}
            }
        }
    }

    /// Starts a client transaction. `req` already carries our top Via with a fresh branch
    /// (the TU builds it); the layer keys the transaction by that branch and the method.
    ///
    /// ACK has no client transaction (RFC 3261 §17.1.1.3): it is sent once and the
    /// returned id never produces events. A request without a branch is sent but can
    /// match no response, so it ends with [`TransactionEvent::ClientTimeout`].
    pub fn send_request(&mut self, now: Instant, req: Request, to: Peer) -> ClientTxId {
        let id = ClientTxId(self.next_id());
        let data = req.to_bytes();
        self.transmit(to, data.clone());
        if req.method == Method::ACK {
            return id;
        }
        let key = req.top_via_branch().map(|branch| ClientKey {
            branch,
            method: req.method.clone(),
        });
        let retransmit = (!to.transport.is_reliable()).then(|| Retransmit {
            at: now + self.config.t1,
            interval: self.config.t1,
        });
        let tx = ClientTx {
            key: key.clone(),
            invite: req.method == Method::INVITE,
            request: req,
            data,
            to,
            state: ClientState::Initial,
            retransmit,
            deadline: Some((now + self.config.t1x64(), Expiry::Timeout)),
            ack: None,
        };
        self.clients.insert(id, tx);
        if let Some(key) = key {
            self.client_index.insert(key, id);
        }
        self.schedule_client(id);
        id
    }

    /// Sends a response on a server transaction (provisional or final).
    ///
    /// After a 2xx to INVITE, further 2xx (the TU's retransmissions, RFC 6026) are passed
    /// through until Timer L ends the transaction.
    ///
    /// # Errors
    /// [`TransactionError::NoSuchTransaction`] when the transaction already ended,
    /// [`TransactionError::FinalAlreadySent`] for a response after the final (other than
    /// further 2xx to INVITE), [`TransactionError::InvalidStatusCode`] outside 100–699.
    pub fn send_response(
        &mut self,
        now: Instant,
        tx: ServerTxId,
        resp: Response,
    ) -> Result<(), TransactionError> {
        let result = self.send_response_unscheduled(now, tx, resp);
        self.schedule_server(tx);
        result
    }

    fn send_response_unscheduled(
        &mut self,
        now: Instant,
        tx: ServerTxId,
        resp: Response,
    ) -> Result<(), TransactionError> {
        let code = resp.code.into_u16();
        if !(100..=699).contains(&code) {
            return Err(TransactionError::InvalidStatusCode(code));
        }
        let config = self.config;
        let self_full = self.servers.len() >= MAX_KEPT_SERVER_TRANSACTIONS;
        let t = self
            .servers
            .get_mut(&tx)
            .ok_or(TransactionError::NoSuchTransaction)?;
        let reliable = t.from.transport.is_reliable();
        let data = resp.to_bytes();
        let peer = t.from;
        let mut remove = false;

        match (t.invite, t.state) {
            (true, ServerState::Proceeding) => {
                t.trying_at = None;
                if code < 200 {
                    t.last_response = Some(data.clone());
                } else if code < 300 {
                    t.state = ServerState::Accepted;
                    t.last_response = None;
                    t.deadline = Some((now + config.t1x64(), Expiry::Cleanup));
                } else {
                    t.state = ServerState::Completed;
                    t.last_response = Some(data.clone());
                    t.retransmit = (!reliable).then(|| Retransmit {
                        at: now + config.t1,
                        interval: config.t1,
                    });
                    t.deadline = Some((now + config.t1x64(), Expiry::Timeout));
                }
            }
            (true, ServerState::Accepted) if (200..300).contains(&code) => {}
            (false, ServerState::Trying | ServerState::Proceeding) => {
                t.last_response = Some(data.clone());
                if code < 200 {
                    t.state = ServerState::Proceeding;
                } else {
                    t.state = ServerState::Completed;
                    t.deadline = Some((now + config.t1x64(), Expiry::Cleanup));
                    // Past the bound, a flood's answers are not kept to absorb
                    // retransmissions: a retransmitted request is handled again instead.
                    remove = reliable || self_full;
                }
            }
            _ => return Err(TransactionError::FinalAlreadySent),
        }
        if code >= 200 {
            t.request = None;
        }
        self.transmit(peer, data);
        if remove {
            self.remove_server(tx);
        }
        Ok(())
    }

    /// Sends a final response once and forgets the transaction, as a stateless proxy would:
    /// nothing is retransmitted and nothing is kept. For answers to strangers (a challenge,
    /// a refusal), so that a spoofed request gets one reply of about its size rather than
    /// a series (amplification), and a flood of them leaves no state behind. A
    /// retransmitted request makes a new transaction and gets a new answer; the ACK of a
    /// non-2xx answered this way is passed up as a stray [`TransactionEvent::Ack`].
    ///
    /// # Errors
    /// As [`send_response`](Self::send_response); provisional responses are refused with
    /// [`TransactionError::InvalidStatusCode`].
    pub fn send_final_and_forget(
        &mut self,
        tx: ServerTxId,
        resp: Response,
    ) -> Result<(), TransactionError> {
        let code = resp.code.into_u16();
        if !(200..=699).contains(&code) {
            return Err(TransactionError::InvalidStatusCode(code));
        }
        let t = self
            .servers
            .get(&tx)
            .ok_or(TransactionError::NoSuchTransaction)?;
        if matches!(
            t.state,
            ServerState::Completed | ServerState::Confirmed | ServerState::Accepted
        ) {
            return Err(TransactionError::FinalAlreadySent);
        }
        let peer = t.from;
        self.transmit(peer, resp.to_bytes());
        self.remove_server(tx);
        Ok(())
    }

    /// Sends outside any transaction (the ACK for a 2xx, a 2xx retransmitted by the TU).
    pub fn send_stateless(&mut self, msg: Message, to: Peer) {
        self.transmit(to, msg.to_bytes());
    }

    /// The INVITE server transaction a CANCEL refers to (same branch and sent-by, §9.2).
    pub fn invite_tx_for_cancel(&self, cancel: &Request) -> Option<ServerTxId> {
        let mut key = server_key(cancel)?;
        key.method = Method::INVITE;
        self.server_index.get(&key).copied()
    }

    /// The request of a server transaction (e.g. to build responses later).
    pub fn server_request(&self, tx: ServerTxId) -> Option<&Request> {
        self.servers.get(&tx).and_then(|t| t.request.as_ref())
    }

    /// The shell could not deliver to `peer` (ICMP error, connection refused or closed):
    /// every client transaction towards it ends with [`TransactionEvent::ClientTimeout`]
    /// (RFC 3261 §17.1.4). For stream peers the connection id must match.
    pub fn handle_transport_error(&mut self, peer: Peer) {
        let mut failed: Vec<ClientTxId> = self
            .clients
            .iter()
            .filter(|(_, tx)| {
                tx.to.transport == peer.transport
                    && tx.to.addr == peer.addr
                    && (peer.conn.is_none() || tx.to.conn == peer.conn)
                    && tx.state != ClientState::Completed
            })
            .map(|(id, _)| *id)
            .collect();
        failed.sort_by_key(|id| id.0);
        for id in failed {
            self.events
                .push_back(TransactionEvent::ClientTimeout { tx: id });
            self.remove_client(id);
        }
    }

    /// Fires every timer due at `now`.
    pub fn handle_timeout(&mut self, now: Instant) {
        let config = self.config;

        let mut due_clients = Vec::new();
        let mut due_servers = Vec::new();
        while let Some(Reverse((at, which))) = self.timers.peek().copied() {
            if at > now {
                break;
            }
            self.timers.pop();
            match which {
                TimerRef::Client(id) => due_clients.push(ClientTxId(id)),
                TimerRef::Server(id) => due_servers.push(ServerTxId(id)),
            }
        }
        due_clients.sort_by_key(|id| id.0);
        due_clients.dedup();
        due_servers.sort_by_key(|id| id.0);
        due_servers.dedup();

        for &id in &due_clients {
            let Some(tx) = self.clients.get_mut(&id) else {
                continue;
            };
            if let Some((at, expiry)) = tx.deadline {
                if at <= now {
                    if expiry == Expiry::Timeout {
                        self.events
                            .push_back(TransactionEvent::ClientTimeout { tx: id });
                    }
                    self.remove_client(id);
                    continue;
                }
            }
            if let Some(r) = tx.retransmit {
                if r.at <= now {
                    let interval = if tx.invite {
                        r.interval.saturating_mul(2)
                    } else if tx.state == ClientState::Proceeding {
                        config.t2
                    } else {
                        r.interval.saturating_mul(2).min(config.t2)
                    };
                    tx.retransmit = Some(Retransmit {
                        at: now + interval,
                        interval,
                    });
                    let (peer, data) = (tx.to, tx.data.clone());
                    self.transmit(peer, data);
                }
            }
        }

        for &id in &due_servers {
            let Some(tx) = self.servers.get_mut(&id) else {
                continue;
            };
            if let Some((at, expiry)) = tx.deadline {
                if at <= now {
                    if expiry == Expiry::Timeout {
                        self.events
                            .push_back(TransactionEvent::ServerTimeout { tx: id });
                    }
                    self.remove_server(id);
                    continue;
                }
            }
            if let (true, Some(request)) = (tx.trying_at.is_some_and(|t| t <= now), &tx.request) {
                tx.trying_at = None;
                let data = response_for(request, StatusCode::TRYING, None).to_bytes();
                tx.last_response = Some(data.clone());
                let peer = tx.from;
                self.transmit(peer, data);
                continue;
            }
            if let Some(r) = tx.retransmit {
                if r.at <= now {
                    let interval = r.interval.saturating_mul(2).min(config.t2);
                    tx.retransmit = Some(Retransmit {
                        at: now + interval,
                        interval,
                    });
                    if let Some(data) = tx.last_response.clone() {
                        let peer = tx.from;
                        self.transmit(peer, data);
                    }
                }
            }
        }
        for id in due_clients {
            self.schedule_client(id);
        }
        for id in due_servers {
            self.schedule_server(id);
        }
    }

    /// The next message to send.
    #[must_use]
    pub fn poll_transmit(&mut self) -> Option<Transmit> {
        self.transmits.pop_front()
    }

    /// The next event for the TU.
    #[must_use]
    pub fn poll_event(&mut self) -> Option<TransactionEvent> {
        self.events.pop_front()
    }

    /// The earliest timer; call [`handle_timeout`](Self::handle_timeout) then.
    #[must_use]
    pub fn poll_timeout(&self) -> Option<Instant> {
        // May name a stale (earlier) instant: waking early is harmless.
        self.timers.peek().map(|Reverse((at, _))| *at)
    }

    /// Live transactions (for tests and metrics).
    pub fn len(&self) -> usize {
        self.clients.len() + self.servers.len()
    }

    /// Whether no transaction is live.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn remove_client(&mut self, id: ClientTxId) {
        if let Some(tx) = self.clients.remove(&id) {
            if let Some(key) = tx.key {
                if self.client_index.get(&key) == Some(&id) {
                    self.client_index.remove(&key);
                }
            }
        }
    }

    fn remove_server(&mut self, id: ServerTxId) {
        if let Some(tx) = self.servers.remove(&id) {
            if let Some(key) = tx.key {
                if self.server_index.get(&key) == Some(&id) {
                    self.server_index.remove(&key);
                }
            }
        }
    }
}

fn client_key(resp: &Response) -> Option<ClientKey> {
    match (resp.top_via_branch(), resp.cseq()) {
        (Some(branch), Some((_, method))) => Some(ClientKey { branch, method }),
        _ => None,
    }
}

fn next_client_timer(tx: &ClientTx) -> Option<Instant> {
    let deadline = tx.deadline.map(|(t, _)| t);
    let retransmit = tx.retransmit.map(|r| r.at);
    [deadline, retransmit].into_iter().flatten().min()
}

fn next_server_timer(tx: &ServerTx) -> Option<Instant> {
    let deadline = tx.deadline.map(|(t, _)| t);
    let retransmit = tx.retransmit.map(|r| r.at);
    [deadline, retransmit, tx.trying_at]
        .into_iter()
        .flatten()
        .min()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::message::response_for;
    use crate::transport::{ConnId, Transport};
    use std::net::SocketAddr;

    const MS: fn(u64) -> Duration = Duration::from_millis;

    fn peer(transport: Transport) -> Peer {
        Peer {
            transport,
            addr: "192.0.2.10:5060".parse::<SocketAddr>().unwrap(),
            conn: transport.is_reliable().then_some(ConnId(7)),
        }
    }

    fn request(method: &str, branch: &str, transport: Transport) -> Request {
        let text = format!(
            "{method} sip:bob@192.0.2.20 SIP/2.0\r\n\
             Via: SIP/2.0/{} 192.0.2.10:5060;branch={branch};rport\r\n\
             Max-Forwards: 70\r\n\
             From: <sip:alice@example.com>;tag=from1\r\n\
             To: <sip:bob@example.com>\r\n\
             Call-ID: call-1@192.0.2.10\r\n\
             CSeq: 1 {method}\r\n\
             Content-Length: 0\r\n\r\n",
            transport.via_name()
        );
        match Message::parse(text.as_bytes()) {
            Ok(Message::Request(r)) => r,
            other => panic!("{other:?}"),
        }
    }

    fn reply(req: &Request, code: u16) -> Message {
        let tag = (code > 100).then_some("totag9");
        Message::Response(response_for(req, StatusCode::from(code), tag))
    }

    /// What happened while the clock ran: transmits and events, stamped with their time.
    type Log = (Vec<(Duration, Bytes)>, Vec<(Duration, TransactionEvent)>);

    /// A layer on a virtual clock.
    struct Harness {
        layer: TransactionLayer,
        base: Instant,
        now: Instant,
    }

    impl Harness {
        fn new() -> Self {
            let base = Instant::now();
            Harness {
                layer: TransactionLayer::new(TimerConfig::default()),
                base,
                now: base,
            }
        }

        fn at(&self, offset: Duration) -> Instant {
            self.base + offset
        }

        fn elapsed(&self) -> Duration {
            self.now - self.base
        }

        fn transmits(&mut self) -> Vec<Bytes> {
            std::iter::from_fn(|| self.layer.poll_transmit())
                .map(|t| t.data)
                .collect()
        }

        fn events(&mut self) -> Vec<TransactionEvent> {
            std::iter::from_fn(|| self.layer.poll_event()).collect()
        }

        /// Jumps from timer to timer until `until`, recording when each transmit and event
        /// happened. Bounded, so a livelock fails the test instead of hanging it.
        fn run_until(&mut self, until: Duration) -> Log {
            let mut sent = Vec::new();
            let mut events = Vec::new();
            for _ in 0..10_000 {
                match self.layer.poll_timeout() {
                    Some(t) if t <= self.at(until) => {
                        assert!(t >= self.now, "timer in the past");
                        self.now = t;
                        self.layer.handle_timeout(t);
                        let e = self.elapsed();
                        sent.extend(self.transmits().into_iter().map(|d| (e, d)));
                        events.extend(self.events().into_iter().map(|ev| (e, ev)));
                    }
                    _ => {
                        self.now = self.at(until);
                        return (sent, events);
                    }
                }
            }
            panic!("livelock");
        }

        fn advance(&mut self, to: Duration) -> Log {
            self.run_until(to)
        }

        fn receive(&mut self, msg: Message, from: Peer) {
            let now = self.now;
            self.layer.handle_message(now, msg, from);
        }
    }

    fn times(sent: &[(Duration, Bytes)]) -> Vec<u64> {
        sent.iter().map(|(d, _)| d.as_millis() as u64).collect()
    }

    fn parse(data: &Bytes) -> Message {
        Message::parse(data).expect("we send valid messages")
    }

    #[test]
    fn non_invite_client_udp_timer_e_and_f() {
        let mut h = Harness::new();
        let req = request("OPTIONS", "z9hG4bKopt1", Transport::Udp);
        let tx = h.layer.send_request(h.now, req, peer(Transport::Udp));
        assert_eq!(h.transmits().len(), 1);
        let (sent, events) = h.run_until(Duration::from_secs(40));
        assert_eq!(
            times(&sent),
            vec![500, 1500, 3500, 7500, 11500, 15500, 19500, 23500, 27500, 31500]
        );
        assert_eq!(events.len(), 1);
        assert_eq!(events[0].0, Duration::from_secs(32));
        assert!(matches!(events[0].1, TransactionEvent::ClientTimeout { tx: t } if t == tx));
        assert_eq!(h.layer.len(), 0);
        assert_eq!(h.layer.poll_timeout(), None);
    }

    #[test]
    fn non_invite_client_tcp_never_retransmits() {
        let mut h = Harness::new();
        let req = request("OPTIONS", "z9hG4bKopt2", Transport::Tcp);
        h.layer.send_request(h.now, req, peer(Transport::Tcp));
        assert_eq!(h.transmits().len(), 1);
        let (sent, events) = h.run_until(Duration::from_secs(40));
        assert!(sent.is_empty());
        assert_eq!(events.len(), 1);
        assert_eq!(events[0].0, Duration::from_secs(32));
        assert_eq!(h.layer.len(), 0);
    }

    #[test]
    fn non_invite_client_final_then_timer_k() {
        let mut h = Harness::new();
        let req = request("REGISTER", "z9hG4bKreg", Transport::Udp);
        let tx = h
            .layer
            .send_request(h.now, req.clone(), peer(Transport::Udp));
        let _ = h.transmits();
        h.advance(MS(600)); // one retransmit at 500 ms
        assert_eq!(h.transmits().len(), 0);
        h.receive(reply(&req, 100), peer(Transport::Udp));
        // Proceeding: Timer E now fires at T2 intervals.
        let (sent, _) = h.advance(MS(10_000));
        assert_eq!(times(&sent), vec![1500, 5500, 9500]);
        h.receive(reply(&req, 401), peer(Transport::Udp));
        let events = h.events();
        assert_eq!(events.len(), 1, "{events:?}");
        assert!(
            matches!(&events[0], TransactionEvent::Response { tx: t, response } if *t == tx && response.code.into_u16() == 401)
        );
        // Retransmitted final: absorbed.
        h.receive(reply(&req, 401), peer(Transport::Udp));
        assert!(h.events().is_empty());
        assert!(h.transmits().is_empty());
        assert_eq!(h.layer.len(), 1);
        let (sent, events) = h.advance(MS(20_000));
        assert!(sent.is_empty() && events.is_empty());
        assert_eq!(h.layer.len(), 0, "Timer K (T4) ended it");
        // A late retransmission is now stray.
        h.receive(reply(&req, 401), peer(Transport::Udp));
        assert!(matches!(
            h.events()[..],
            [TransactionEvent::StrayResponse { .. }]
        ));
    }

    #[test]
    fn non_invite_client_over_tcp_ends_on_final() {
        let mut h = Harness::new();
        let req = request("OPTIONS", "z9hG4bKopt3", Transport::Tcp);
        h.layer
            .send_request(h.now, req.clone(), peer(Transport::Tcp));
        h.receive(reply(&req, 200), peer(Transport::Tcp));
        assert_eq!(h.events().len(), 1);
        assert_eq!(h.layer.len(), 0);
    }

    #[test]
    fn invite_client_timer_a_and_b() {
        let mut h = Harness::new();
        let req = request("INVITE", "z9hG4bKinv1", Transport::Udp);
        let tx = h.layer.send_request(h.now, req, peer(Transport::Udp));
        assert_eq!(h.transmits().len(), 1);
        let (sent, events) = h.run_until(Duration::from_secs(40));
        assert_eq!(times(&sent), vec![500, 1500, 3500, 7500, 15500, 31500]);
        assert_eq!(events.len(), 1);
        assert_eq!(events[0].0, Duration::from_secs(32));
        assert!(matches!(events[0].1, TransactionEvent::ClientTimeout { tx: t } if t == tx));
        assert_eq!(h.layer.len(), 0);
    }

    #[test]
    fn invite_client_provisional_stops_retransmits_and_non_2xx_is_acked() {
        let mut h = Harness::new();
        let req = request("INVITE", "z9hG4bKinv2", Transport::Udp);
        let tx = h
            .layer
            .send_request(h.now, req.clone(), peer(Transport::Udp));
        let _ = h.transmits();
        h.advance(MS(700));
        assert_eq!(h.transmits().len(), 0);
        h.receive(reply(&req, 180), peer(Transport::Udp));
        assert!(matches!(&h.events()[..], [TransactionEvent::Response { tx: t, .. }] if *t == tx));
        let (sent, events) = h.advance(Duration::from_secs(60));
        assert!(sent.is_empty(), "1xx stops Timer A");
        assert!(events.is_empty(), "Timer B does not run in Proceeding");

        h.receive(reply(&req, 486), peer(Transport::Udp));
        let sent = h.transmits();
        assert_eq!(sent.len(), 1);
        let Message::Request(ack) = parse(&sent[0]) else {
            panic!("not an ACK")
        };
        assert_eq!(ack.method, Method::ACK);
        assert_eq!(ack.top_via_branch().as_deref(), Some("z9hG4bKinv2"));
        assert_eq!(ack.to_tag().as_deref(), Some("totag9"));
        assert_eq!(ack.from_tag().as_deref(), Some("from1"));
        assert_eq!(ack.cseq(), Some((1, Method::ACK)));
        assert_eq!(ack.call_id(), req.call_id());
        assert_eq!(
            ack.uri.default_print_ctx().to_string(),
            req.uri.default_print_ctx().to_string()
        );
        let events = h.events();
        assert!(
            matches!(&events[..], [TransactionEvent::Response { response, .. }] if response.code.into_u16() == 486)
        );

        // Retransmitted final during Timer D: re-ACKed, not delivered again.
        h.advance(Duration::from_secs(70));
        h.receive(reply(&req, 486), peer(Transport::Udp));
        assert_eq!(h.transmits(), sent);
        assert!(h.events().is_empty());
        let before = h.elapsed();
        let (_, events) = h.advance(Duration::from_secs(200));
        assert!(events.is_empty());
        assert_eq!(h.layer.len(), 0);
        // Timer D ran 32 s from the final (received at 60 s).
        assert!(before < Duration::from_secs(92));
    }

    #[test]
    fn invite_client_timer_d_is_32s_on_udp_and_zero_on_tcp() {
        let mut h = Harness::new();
        let req = request("INVITE", "z9hG4bKinv3", Transport::Udp);
        h.layer
            .send_request(h.now, req.clone(), peer(Transport::Udp));
        h.receive(reply(&req, 503), peer(Transport::Udp));
        assert_eq!(h.layer.len(), 1);
        h.advance(MS(31_999));
        assert_eq!(h.layer.len(), 1);
        h.advance(MS(32_000));
        assert_eq!(h.layer.len(), 0);

        let mut h = Harness::new();
        let req = request("INVITE", "z9hG4bKinv4", Transport::Tcp);
        h.layer
            .send_request(h.now, req.clone(), peer(Transport::Tcp));
        h.receive(reply(&req, 503), peer(Transport::Tcp));
        assert_eq!(h.transmits().len(), 2, "INVITE and ACK");
        assert_eq!(h.layer.len(), 0);
    }

    #[test]
    fn invite_client_2xx_ends_and_retransmissions_are_stray() {
        let mut h = Harness::new();
        let req = request("INVITE", "z9hG4bKinv5", Transport::Udp);
        let tx = h
            .layer
            .send_request(h.now, req.clone(), peer(Transport::Udp));
        let _ = h.transmits();
        h.receive(reply(&req, 200), peer(Transport::Udp));
        assert!(matches!(&h.events()[..], [TransactionEvent::Response { tx: t, .. }] if *t == tx));
        assert!(h.transmits().is_empty(), "the TU ACKs a 2xx, not the layer");
        assert_eq!(h.layer.len(), 0);
        h.receive(reply(&req, 200), peer(Transport::Udp));
        assert!(
            matches!(&h.events()[..], [TransactionEvent::StrayResponse { response, .. }] if response.code == StatusCode::OK)
        );
    }

    fn server_invite(h: &mut Harness, branch: &str, transport: Transport) -> (ServerTxId, Request) {
        let req = request("INVITE", branch, transport);
        h.receive(Message::Request(req), peer(transport));
        match &h.events()[..] {
            [TransactionEvent::Request { tx, request, .. }] => (*tx, request.clone()),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn invite_server_sends_100_after_200ms_and_repeats_last_provisional() {
        let mut h = Harness::new();
        let (tx, req) = server_invite(&mut h, "z9hG4bKs1", Transport::Udp);
        assert!(h.transmits().is_empty());
        let (sent, _) = h.advance(MS(1000));
        assert_eq!(times(&sent), vec![200]);
        let Message::Response(trying) = parse(&sent[0].1) else {
            panic!()
        };
        assert_eq!(trying.code, StatusCode::TRYING);

        let ringing = response_for(&req, StatusCode::RINGING, Some("t1"));
        h.layer.send_response(h.now, tx, ringing).unwrap();
        let sent_180 = h.transmits();
        assert_eq!(sent_180.len(), 1);
        // A retransmitted INVITE gets the last provisional again and no new event.
        h.receive(
            Message::Request(request("INVITE", "z9hG4bKs1", Transport::Udp)),
            peer(Transport::Udp),
        );
        assert_eq!(h.transmits(), sent_180);
        assert!(h.events().is_empty());
    }

    #[test]
    fn invite_server_tu_answering_quickly_suppresses_the_100() {
        let mut h = Harness::new();
        let (tx, req) = server_invite(&mut h, "z9hG4bKs2", Transport::Udp);
        h.advance(MS(50));
        h.layer
            .send_response(
                h.now,
                tx,
                response_for(&req, StatusCode::RINGING, Some("t")),
            )
            .unwrap();
        assert_eq!(h.transmits().len(), 1);
        let (sent, _) = h.advance(MS(5000));
        assert!(sent.is_empty());
    }

    #[test]
    fn a_final_sent_and_forgotten_is_sent_once_and_keeps_nothing() {
        let mut h = Harness::new();
        let (tx, req) = server_invite(&mut h, "z9hG4bKs9", Transport::Udp);
        let challenge = response_for(&req, StatusCode::from(407), Some("t"));
        assert!(matches!(
            h.layer
                .send_final_and_forget(tx, response_for(&req, StatusCode::RINGING, Some("t"))),
            Err(TransactionError::InvalidStatusCode(180))
        ));
        h.layer.send_final_and_forget(tx, challenge).unwrap();
        assert_eq!(h.transmits().len(), 1);
        assert!(h.layer.is_empty(), "no transaction kept");
        // Nothing is retransmitted: one datagram in, one out.
        let (sent, _) = h.advance(MS(40_000));
        assert!(sent.is_empty());
        // The ACK is a stray one; a retransmitted INVITE is a new request.
        h.receive(
            Message::Request(request("ACK", "z9hG4bKs9", Transport::Udp)),
            peer(Transport::Udp),
        );
        assert!(matches!(h.events()[..], [TransactionEvent::Ack { .. }]));
        h.receive(
            Message::Request(request("INVITE", "z9hG4bKs9", Transport::Udp)),
            peer(Transport::Udp),
        );
        assert!(matches!(h.events()[..], [TransactionEvent::Request { .. }]));
        // A REGISTER answered this way keeps nothing either.
        h.receive(
            Message::Request(request("REGISTER", "z9hG4bKs10", Transport::Udp)),
            peer(Transport::Udp),
        );
        let Some(TransactionEvent::Request {
            tx, request: reg, ..
        }) = h.events().pop()
        else {
            panic!()
        };
        let before = h.layer.len();
        h.layer
            .send_final_and_forget(tx, response_for(&reg, StatusCode::from(401), Some("t")))
            .unwrap();
        assert_eq!(h.layer.len(), before - 1);
    }

    #[test]
    fn invite_server_timer_g_until_ack_then_timer_i() {
        let mut h = Harness::new();
        let (tx, req) = server_invite(&mut h, "z9hG4bKs3", Transport::Udp);
        h.layer
            .send_response(
                h.now,
                tx,
                response_for(&req, StatusCode::from(486), Some("t")),
            )
            .unwrap();
        assert_eq!(h.transmits().len(), 1);
        let (sent, _) = h.advance(MS(12_000));
        assert_eq!(times(&sent), vec![500, 1500, 3500, 7500, 11500]);
        assert!(matches!(
            h.layer
                .send_response(h.now, tx, response_for(&req, StatusCode::OK, None)),
            Err(TransactionError::FinalAlreadySent)
        ));
        // Retransmitted INVITE in Completed: final re-sent.
        h.receive(
            Message::Request(request("INVITE", "z9hG4bKs3", Transport::Udp)),
            peer(Transport::Udp),
        );
        assert_eq!(h.transmits().len(), 1);
        // ACK: absorbed, retransmissions stop, Timer I (T4) ends the transaction.
        h.receive(
            Message::Request(request("ACK", "z9hG4bKs3", Transport::Udp)),
            peer(Transport::Udp),
        );
        assert!(
            h.events().is_empty(),
            "the ACK for a non-2xx is not the TU's"
        );
        h.receive(
            Message::Request(request("ACK", "z9hG4bKs3", Transport::Udp)),
            peer(Transport::Udp),
        );
        h.receive(
            Message::Request(request("INVITE", "z9hG4bKs3", Transport::Udp)),
            peer(Transport::Udp),
        );
        assert!(
            h.events().is_empty() && h.transmits().is_empty(),
            "Confirmed absorbs"
        );
        let (sent, events) = h.advance(MS(16_999));
        assert!(sent.is_empty() && events.is_empty());
        assert_eq!(h.layer.len(), 1);
        h.advance(MS(17_000));
        assert_eq!(h.layer.len(), 0);
        assert!(matches!(
            h.layer
                .send_response(h.now, tx, response_for(&req, StatusCode::OK, None)),
            Err(TransactionError::NoSuchTransaction)
        ));
    }

    #[test]
    fn invite_server_timer_h_without_ack() {
        let mut h = Harness::new();
        let (tx, req) = server_invite(&mut h, "z9hG4bKs4", Transport::Udp);
        h.layer
            .send_response(
                h.now,
                tx,
                response_for(&req, StatusCode::from(480), Some("t")),
            )
            .unwrap();
        assert_eq!(h.transmits().len(), 1);
        let (sent, events) = h.advance(Duration::from_secs(40));
        assert_eq!(
            times(&sent),
            vec![500, 1500, 3500, 7500, 11500, 15500, 19500, 23500, 27500, 31500]
        );
        assert_eq!(events.len(), 1);
        assert_eq!(events[0].0, Duration::from_secs(32));
        assert!(matches!(events[0].1, TransactionEvent::ServerTimeout { tx: t } if t == tx));
        assert_eq!(h.layer.len(), 0);
    }

    #[test]
    fn invite_server_over_tcp_no_timer_g_and_ack_ends_it() {
        let mut h = Harness::new();
        let (tx, req) = server_invite(&mut h, "z9hG4bKs5", Transport::Tcp);
        h.layer
            .send_response(
                h.now,
                tx,
                response_for(&req, StatusCode::from(486), Some("t")),
            )
            .unwrap();
        let _ = h.transmits();
        let (sent, _) = h.advance(MS(10_000));
        // Only the automatic 100 Trying was never due (the TU answered at once).
        assert!(sent.is_empty());
        h.receive(
            Message::Request(request("ACK", "z9hG4bKs5", Transport::Tcp)),
            peer(Transport::Tcp),
        );
        assert_eq!(h.layer.len(), 0);
    }

    #[test]
    fn invite_server_2xx_accepted_state() {
        let mut h = Harness::new();
        let (tx, req) = server_invite(&mut h, "z9hG4bKs6", Transport::Udp);
        let ok = response_for(&req, StatusCode::OK, Some("t"));
        h.layer.send_response(h.now, tx, ok.clone()).unwrap();
        assert_eq!(h.transmits().len(), 1);
        // The TU retransmits its 2xx through the transaction.
        h.layer.send_response(h.now, tx, ok).unwrap();
        assert_eq!(h.transmits().len(), 1);
        let (sent, _) = h.advance(MS(5000));
        assert!(sent.is_empty(), "the layer does not retransmit 2xx");
        // INVITE retransmissions are absorbed.
        h.receive(
            Message::Request(request("INVITE", "z9hG4bKs6", Transport::Udp)),
            peer(Transport::Udp),
        );
        assert!(h.events().is_empty() && h.transmits().is_empty());
        // The ACK (new branch, as RFC 3261 wants) goes to the TU.
        h.receive(
            Message::Request(request("ACK", "z9hG4bKack", Transport::Udp)),
            peer(Transport::Udp),
        );
        assert!(
            matches!(&h.events()[..], [TransactionEvent::Ack { request, .. }] if request.method == Method::ACK)
        );
        h.advance(Duration::from_secs(40));
        assert_eq!(h.layer.len(), 0, "Timer L");
    }

    #[test]
    fn non_invite_server_timer_j_absorbs_retransmissions() {
        let mut h = Harness::new();
        let req = request("OPTIONS", "z9hG4bKs7", Transport::Udp);
        h.receive(Message::Request(req.clone()), peer(Transport::Udp));
        let events = h.events();
        let [TransactionEvent::Request { tx, request, from }] = &events[..] else {
            panic!()
        };
        assert_eq!(*from, peer(Transport::Udp));
        assert!(h.layer.server_request(*tx).is_some());
        // Retransmission before the TU answers: absorbed silently.
        h.receive(Message::Request(req.clone()), peer(Transport::Udp));
        assert!(h.events().is_empty() && h.transmits().is_empty());
        assert!(
            h.advance(MS(300)).0.is_empty(),
            "no automatic 100 for non-INVITE"
        );
        h.layer
            .send_response(h.now, *tx, response_for(request, StatusCode::OK, Some("t")))
            .unwrap();
        let sent = h.transmits();
        assert_eq!(sent.len(), 1);
        for _ in 0..3 {
            h.receive(Message::Request(req.clone()), peer(Transport::Udp));
            assert_eq!(h.transmits(), sent);
            assert!(h.events().is_empty());
        }
        h.advance(MS(300 + 31_999));
        assert_eq!(h.layer.len(), 1);
        h.advance(MS(300 + 32_000));
        assert_eq!(h.layer.len(), 0);
    }

    #[test]
    fn non_invite_server_over_tcp_ends_on_final() {
        let mut h = Harness::new();
        let req = request("BYE", "z9hG4bKs8", Transport::Tcp);
        h.receive(Message::Request(req.clone()), peer(Transport::Tcp));
        let [TransactionEvent::Request { tx, .. }] = h.events()[..] else {
            panic!()
        };
        h.layer
            .send_response(h.now, tx, response_for(&req, StatusCode::OK, None))
            .unwrap();
        let sent = std::iter::from_fn(|| h.layer.poll_transmit()).collect::<Vec<_>>();
        assert_eq!(sent.len(), 1);
        assert_eq!(
            sent[0].peer.conn,
            Some(ConnId(7)),
            "back over the same connection"
        );
        assert_eq!(h.layer.len(), 0);
    }

    #[test]
    fn non_invite_server_silent_tu_is_dropped_after_64_t1() {
        let mut h = Harness::new();
        h.receive(
            Message::Request(request("INFO", "z9hG4bKs9", Transport::Udp)),
            peer(Transport::Udp),
        );
        let _ = h.events();
        h.advance(Duration::from_secs(33));
        assert_eq!(h.layer.len(), 0);
    }

    #[test]
    fn cancel_is_its_own_transaction_and_finds_the_invite() {
        let mut h = Harness::new();
        let (invite_tx, _) = server_invite(&mut h, "z9hG4bKs10", Transport::Udp);
        let cancel = request("CANCEL", "z9hG4bKs10", Transport::Udp);
        h.receive(Message::Request(cancel), peer(Transport::Udp));
        let events = h.events();
        let [TransactionEvent::Request { tx, request, .. }] = &events[..] else {
            panic!("{events:?}")
        };
        assert_ne!(*tx, invite_tx);
        assert_eq!(h.layer.invite_tx_for_cancel(request), Some(invite_tx));
        assert_eq!(h.layer.len(), 2);
        // Another sent-by does not match (§17.2.3).
        let text = String::from_utf8(request.to_bytes().to_vec())
            .unwrap()
            .replace("192.0.2.10:5060", "192.0.2.99:5060");
        let Ok(Message::Request(other)) = Message::parse(text.as_bytes()) else {
            panic!()
        };
        assert_eq!(h.layer.invite_tx_for_cancel(&other), None);
    }

    #[test]
    fn via_gets_received_and_rport() {
        let mut h = Harness::new();
        let req = request("OPTIONS", "z9hG4bKv1", Transport::Udp);
        let from = Peer {
            transport: Transport::Udp,
            addr: "203.0.113.5:40000".parse().unwrap(),
            conn: None,
        };
        h.receive(Message::Request(req), from);
        let [TransactionEvent::Request { request, .. }] = &h.events()[..] else {
            panic!()
        };
        assert_eq!(
            request.header_str(&Name::VIA).as_deref(),
            Some("SIP/2.0/UDP 192.0.2.10:5060;branch=z9hG4bKv1;rport=40000;received=203.0.113.5")
        );
        // Responses built from it carry the stamped Via and go to the source.
        let resp = response_for(request, StatusCode::OK, None);
        assert!(resp.header_str(&Name::VIA).unwrap().contains("rport=40000"));

        // Same address, no rport asked: the Via is left alone.
        let text = String::from_utf8(request_text_without_rport().into_bytes()).unwrap();
        let Ok(Message::Request(plain)) = Message::parse(text.as_bytes()) else {
            panic!()
        };
        h.receive(Message::Request(plain), peer(Transport::Udp));
        let [TransactionEvent::Request { request, .. }] = &h.events()[..] else {
            panic!()
        };
        assert_eq!(
            request.header_str(&Name::VIA).as_deref(),
            Some("SIP/2.0/UDP 192.0.2.10:5060;branch=z9hG4bKv2")
        );
    }

    #[test]
    fn via_stamping_keeps_later_vias_on_the_same_line() {
        let mut h = Harness::new();
        let text = String::from_utf8(request("OPTIONS", "z9hG4bKv3", Transport::Udp).to_bytes().to_vec())
            .unwrap()
            .replace(
                ";rport\r\n",
                ";rport;received=1.1.1.1 , SIP/2.0/UDP p.example.com;branch=z9hG4bKp;x=\"a,b\"\r\nVia: SIP/2.0/UDP q;branch=z9hG4bKq\r\n",
            );
        let Ok(Message::Request(req)) = Message::parse(text.as_bytes()) else {
            panic!("{text}")
        };
        h.receive(Message::Request(req), peer(Transport::Udp));
        let [TransactionEvent::Request { request, tx, .. }] = &h.events()[..] else {
            panic!()
        };
        let vias: Vec<_> = request
            .headers
            .get_raw(&Name::VIA)
            .map(|v| v.as_str().to_owned())
            .collect();
        assert_eq!(
            vias,
            vec![
                "SIP/2.0/UDP 192.0.2.10:5060;branch=z9hG4bKv3;rport=5060;received=192.0.2.10, SIP/2.0/UDP p.example.com;branch=z9hG4bKp;x=\"a,b\"".to_owned(),
                "SIP/2.0/UDP q;branch=z9hG4bKq".to_owned(),
            ]
        );
        assert!(matches!(
            h.layer
                .send_response(h.now, *tx, Response::new(StatusCode::from(42))),
            Err(TransactionError::InvalidStatusCode(42))
        ));
    }

    fn request_text_without_rport() -> String {
        String::from_utf8(
            request("OPTIONS", "z9hG4bKv2", Transport::Udp)
                .to_bytes()
                .to_vec(),
        )
        .unwrap()
        .replace(";rport", "")
    }

    #[test]
    fn transport_error_fails_client_transactions() {
        let mut h = Harness::new();
        let req = request("INVITE", "z9hG4bKte", Transport::Tcp);
        let tx = h.layer.send_request(h.now, req, peer(Transport::Tcp));
        h.layer.handle_transport_error(peer(Transport::Tcp));
        assert!(matches!(&h.events()[..], [TransactionEvent::ClientTimeout { tx: t }] if *t == tx));
        assert_eq!(h.layer.len(), 0);
    }

    #[test]
    fn ack_without_transaction_and_stateless_sends() {
        let mut h = Harness::new();
        let ack = request("ACK", "z9hG4bKa", Transport::Udp);
        h.layer
            .send_request(h.now, ack.clone(), peer(Transport::Udp));
        h.layer
            .send_stateless(Message::Request(ack), peer(Transport::Udp));
        assert_eq!(h.transmits().len(), 2);
        assert_eq!(h.layer.len(), 0);
        assert_eq!(h.layer.poll_timeout(), None);
    }

    /// Two layers over a lossy UDP link: an INVITE that meets a busy callee completes
    /// (INVITE, 486, ACK) despite dropped packets, and both layers drain to empty.
    #[test]
    fn lossy_link_invite_busy() {
        for seed in 1..=40 {
            lossy_run(seed);
        }
    }

    fn lossy_run(seed: u32) {
        let base = Instant::now();
        let mut client = TransactionLayer::new(TimerConfig::default());
        let mut server = TransactionLayer::new(TimerConfig::default());
        let uac = peer(Transport::Udp);
        let req = request("INVITE", "z9hG4bKlossy", Transport::Udp);
        client.send_request(base, req, uac);
        let mut rng: u32 = seed;
        let mut drop = move || {
            rng = rng.wrapping_mul(1_103_515_245).wrapping_add(12345);
            (rng >> 16) % 3 < 1 // a third of all packets is lost
        };
        let mut now = base;
        let mut client_final = 0;
        let mut client_timeouts = 0;
        let mut server_requests = 0;
        for _ in 0..10_000 {
            let mut quiet = false;
            while !quiet {
                quiet = true;
                while let Some(t) = client.poll_transmit() {
                    quiet = false;
                    if !drop() {
                        server.handle_message(now, parse(&t.data), uac);
                    }
                }
                while let Some(t) = server.poll_transmit() {
                    quiet = false;
                    if !drop() {
                        client.handle_message(now, parse(&t.data), uac);
                    }
                }
                while let Some(ev) = server.poll_event() {
                    if let TransactionEvent::Request { tx, request, .. } = ev {
                        server_requests += 1;
                        let busy = response_for(&request, StatusCode::from(486), Some("busy"));
                        server.send_response(now, tx, busy).unwrap();
                    }
                }
                while let Some(ev) = client.poll_event() {
                    match ev {
                        TransactionEvent::Response { response, .. }
                            if response.code.into_u16() >= 200 =>
                        {
                            client_final += 1
                        }
                        TransactionEvent::ClientTimeout { .. } => client_timeouts += 1,
                        _ => {}
                    }
                }
            }
            let next = [client.poll_timeout(), server.poll_timeout()]
                .into_iter()
                .flatten()
                .min();
            let Some(next) = next else { break };
            now = next;
            client.handle_timeout(now);
            server.handle_timeout(now);
        }
        assert!(
            server_requests <= 1,
            "seed {seed}: retransmitted INVITEs are absorbed"
        );
        assert_eq!(
            client_final + client_timeouts,
            1,
            "seed {seed}: the TU hears exactly one outcome"
        );
        assert!(client.is_empty() && server.is_empty());
    }
}
