//! Trunks: the PBX as a client of SIP providers.
//!
//! For each trunk of the production configuration the engine keeps a [`TrunkLink`]: the
//! provider's address (an IP literal at once; a hostname once the IO shell has resolved
//! it, see [`EngineEvent::ResolveTrunk`]), and, when the trunk registers, a REGISTER client
//! that answers the provider's digest challenge, refreshes before expiry, and backs off
//! after failures (30 s doubling to 10 min, so a provider that is down sees a trickle,
//! not a storm). Its state is what the API and console show.
//!
//! A request comes *from* a trunk when it is addressed to the contact we registered (the
//! provider routes calls for our numbers to it), or when it comes from the trunk's own
//! address and port. Nothing else is treated as the provider: strangers must
//! authenticate as users, and only users can reach a trunk (toll fraud).

use std::net::{IpAddr, SocketAddr};
use std::time::Instant;

use confero_sip::digest;
use confero_sip::message::{Request, Response};
use confero_sip::transport::{Peer, Transport};
use confero_sip::{Method, Name, SipUri};

use super::ids::{Owner, Timer};
pub use super::registration::RegistrationState;
use super::registration::{Registration, Step};
use super::{local, ClientPurpose, Engine, EngineEvent, ALLOW, USER_AGENT};
use crate::config::{Trunk, TrunkTransport};
use confero_sip::headers;

/// A trunk's live state for the API.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TrunkStatus {
    /// The trunk's configuration id.
    pub id: i64,
    /// Its name.
    pub name: String,
    /// Where its registration stands.
    pub registration: RegistrationState,
    /// The provider's address in use, once known.
    pub address: Option<SocketAddr>,
    /// SIP status of the last registration answer (or 408/503 for no answer / no route).
    pub status: Option<u16>,
    /// The reason phrase of that answer, or why there was none.
    pub reason: Option<String>,
    /// Unix time the registration runs out, while registered.
    pub expires_unix: Option<u64>,
    /// Unix time of the next attempt, after a failure.
    pub retry_unix: Option<u64>,
}

/// The engine's side of one trunk.
#[derive(Debug)]
pub(super) struct TrunkLink {
    pub(super) trunk: Trunk,
    /// The user part of the Contact we register: calls to it are the provider's.
    pub(super) contact_user: String,
    pub(super) addresses: Vec<SocketAddr>,
    call_id: String,
    from_tag: String,
    registration: Registration,
}

impl TrunkLink {
    fn transport(&self) -> Transport {
        match self.trunk.transport {
            TrunkTransport::Udp => Transport::Udp,
            TrunkTransport::Tcp => Transport::Tcp,
            TrunkTransport::Tls => Transport::Tls,
        }
    }

    /// Where requests for this trunk go.
    pub(super) fn peer(&self) -> Option<Peer> {
        Some(Peer {
            transport: self.transport(),
            addr: *self.addresses.first()?,
            conn: None,
        })
    }

    /// The provider's domain as written in URIs.
    pub(super) fn domain(&self) -> String {
        if self.trunk.port == 5060 || self.trunk.port == 5061 {
            self.trunk.host.clone()
        } else {
            format!("{}:{}", self.trunk.host, self.trunk.port)
        }
    }
}

fn literal_address(host: &str, port: u16) -> Option<SocketAddr> {
    let unbracketed = host
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host);
    unbracketed
        .parse::<IpAddr>()
        .ok()
        .map(|ip| SocketAddr::new(ip, port))
}

impl Engine {
    /// Brings the trunk links in line with the production configuration: new trunks are
    /// looked up and registered, changed ones start over, removed ones unregister.
    pub(super) fn reconcile_trunks(&mut self, now: Instant) {
        let cfg = self.config.clone();
        let wanted: Vec<Trunk> = cfg.config.trunks.clone();
        let gone: Vec<i64> = self
            .trunks
            .keys()
            .copied()
            .filter(|id| !wanted.iter().any(|t| t.id == *id))
            .collect();
        for id in gone {
            self.drop_trunk(now, id);
        }
        for trunk in wanted {
            match self.trunks.get(&trunk.id) {
                Some(link) if link.trunk == trunk => continue,
                Some(_) => self.drop_trunk(now, trunk.id),
                None => {}
            }
            self.add_trunk(now, trunk);
        }
    }

    fn add_trunk(&mut self, now: Instant, trunk: Trunk) {
        let id = trunk.id;
        let literal = literal_address(&trunk.host, trunk.port);
        let state = if literal.is_none() && trunk.register {
            RegistrationState::Resolving
        } else {
            RegistrationState::Off
        };
        let link = TrunkLink {
            contact_user: format!("confero-{}", self.entropy.tag().to_ascii_lowercase()),
            addresses: literal.into_iter().collect(),
            call_id: self.entropy.call_id(&self.domain()),
            from_tag: self.entropy.tag(),
            registration: Registration::new(state),
            trunk,
        };
        if literal.is_none() {
            self.events.push_back(EngineEvent::ResolveTrunk {
                trunk: id,
                host: link.trunk.host.clone(),
                port: link.trunk.port,
            });
        }
        self.trunks.insert(id, link);
        if literal.is_some() {
            self.register_trunk(now, id);
        }
        self.events.push_back(EngineEvent::TrunksChanged);
    }

    /// Forgets a trunk; a registration it holds is withdrawn (Expires: 0).
    fn drop_trunk(&mut self, now: Instant, id: i64) {
        let Some(link) = self.trunks.remove(&id) else {
            return;
        };
        self.client_txs
            .retain(|_, (owner, _)| *owner != Owner::Trunk(id));
        if link.registration.state == RegistrationState::Registered {
            if let Some(peer) = link.peer() {
                let via = local(&self.settings).via(peer.transport, &mut self.entropy);
                let req = self.register_request(&link, 0, peer, via);
                // Nobody listens for the answer: the link is gone.
                let _ = self.tx.send_request(now, req, peer);
            }
        }
        self.events.push_back(EngineEvent::TrunksChanged);
    }

    /// The shell's answer to [`EngineEvent::ResolveTrunk`].
    pub fn set_trunk_addresses(
        &mut self,
        now: Instant,
        trunk: i64,
        result: Result<Vec<SocketAddr>, String>,
    ) {
        let Some(link) = self.trunks.get_mut(&trunk) else {
            return;
        };
        match result {
            Ok(addrs) if !addrs.is_empty() => {
                link.addresses = addrs;
                if link.trunk.register {
                    let step = link.registration.start();
                    self.registration_step(now, trunk, step);
                }
            }
            Ok(_) | Err(_) => {
                let why = match result {
                    Err(e) => format!("cannot resolve {}: {e}", link.trunk.host),
                    Ok(_) => format!("{} has no address", link.trunk.host),
                };
                link.addresses.clear();
                // With no address, the retry timer asks the shell to resolve again.
                let step = link.registration.failed(now, 503, &why);
                self.registration_step(now, trunk, step);
            }
        }
        self.events.push_back(EngineEvent::TrunksChanged);
    }

    fn register_request(&self, link: &TrunkLink, expires: u32, peer: Peer, via: String) -> Request {
        let domain = link.domain();
        let uri: SipUri = format!("sip:{domain}")
            .parse()
            .unwrap_or_else(|_| SipUri::new(peer.addr.into()));
        let user = link
            .trunk
            .username
            .clone()
            .unwrap_or_else(|| link.contact_user.clone());
        let mut req = Request::new(Method::REGISTER, uri);
        let h = &mut req.headers;
        h.insert(Name::VIA, via);
        h.insert(Name::MAX_FORWARDS, "70");
        h.insert(
            Name::FROM,
            format!("<sip:{user}@{domain}>;tag={}", link.from_tag),
        );
        h.insert(Name::TO, format!("<sip:{user}@{domain}>"));
        h.insert(Name::CALL_ID, link.call_id.clone());
        h.insert(
            Name::CSEQ,
            format!("{} REGISTER", link.registration.cseq + 1),
        );
        h.insert(Name::CONTACT, self.trunk_contact(link, peer.transport));
        h.insert(Name::EXPIRES, expires.to_string());
        h.insert(Name::ALLOW, ALLOW);
        h.insert(Name::USER_AGENT, USER_AGENT);
        req
    }

    /// Our Contact toward a trunk: the token that marks calls as the provider's.
    pub(super) fn trunk_contact(&self, link: &TrunkLink, transport: Transport) -> String {
        match transport {
            Transport::Udp => format!("<sip:{}@{}>", link.contact_user, self.settings.advertised),
            t => format!(
                "<sip:{}@{};transport={}>",
                link.contact_user,
                self.settings.advertised,
                t.via_name().to_ascii_lowercase()
            ),
        }
    }

    /// Registers a trunk that registers (first REGISTER, or after its host resolved).
    fn register_trunk(&mut self, now: Instant, id: i64) {
        let Some(link) = self.trunks.get(&id) else {
            return;
        };
        if link.trunk.register {
            let step = link.registration.start();
            self.registration_step(now, id, step);
        }
    }

    /// Takes the step a trunk's registration asked for.
    fn registration_step(&mut self, now: Instant, id: i64, step: Step) {
        match step {
            Step::Nothing => return,
            Step::Resolve => {
                if let Some(link) = self.trunks.get(&id) {
                    self.events.push_back(EngineEvent::ResolveTrunk {
                        trunk: id,
                        host: link.trunk.host.clone(),
                        port: link.trunk.port,
                    });
                }
            }
            Step::WakeAt(at) => self.timers.push(std::cmp::Reverse((at, Timer::Trunk(id)))),
            Step::Register { expires, challenge } => {
                if let Err((code, why)) = self.send_register(now, id, expires, challenge.as_deref())
                {
                    let Some(link) = self.trunks.get_mut(&id) else {
                        return;
                    };
                    let step = link.registration.failed(now, code, why);
                    return self.registration_step(now, id, step);
                }
            }
        }
        self.events.push_back(EngineEvent::TrunksChanged);
    }

    /// One REGISTER for `expires` seconds, answering `challenge` when given; why not
    /// when it could not be sent.
    fn send_register(
        &mut self,
        now: Instant,
        id: i64,
        expires: u32,
        challenge: Option<&Response>,
    ) -> Result<(), (u16, &'static str)> {
        let Some(link) = self.trunks.get(&id) else {
            return Ok(());
        };
        let Some(peer) = link.peer() else {
            return Err((503, "the provider has no address"));
        };
        let via = local(&self.settings).via(peer.transport, &mut self.entropy);
        let mut req = self.register_request(link, expires, peer, via);
        if let Some(challenge) = challenge {
            if !self.authorize(id, &mut req, challenge) {
                return Err((
                    challenge.code.into_u16(),
                    "the provider's challenge cannot be answered (no credentials, or an algorithm we lack)",
                ));
            }
        }
        self.send_owned(now, Owner::Trunk(id), ClientPurpose::Register, req, peer);
        if let Some(link) = self.trunks.get_mut(&id) {
            link.registration.sent();
        }
        Ok(())
    }

    pub(super) fn on_trunk_register_response(&mut self, now: Instant, id: i64, resp: Response) {
        let Some(link) = self.trunks.get_mut(&id) else {
            return;
        };
        let provider = link.addresses.first().copied();
        let step = link
            .registration
            .handle_response(now, &resp, &link.contact_user, provider);
        let r = &link.registration;
        match (&step, r.state) {
            (Step::WakeAt(_), RegistrationState::Registered) => {
                let expires = r
                    .expires_at
                    .map(|t| t.saturating_duration_since(now).as_secs());
                tracing::info!(trunk = %link.trunk.name, ?expires, "trunk registered");
            }
            (Step::WakeAt(_), RegistrationState::Failed) => {
                tracing::warn!(trunk = %link.trunk.name, code = ?r.status, reason = ?r.reason, "trunk registration failed");
            }
            _ => {}
        }
        self.registration_step(now, id, step);
    }

    /// Adds the credentials answering `challenge` to `req` (a retry of a request the
    /// provider challenged). False when the trunk has none or the challenge is unusable.
    pub(super) fn authorize(
        &mut self,
        trunk: i64,
        req: &mut Request,
        challenge: &Response,
    ) -> bool {
        let Some(link) = self.trunks.get(&trunk) else {
            return false;
        };
        let entropy = &mut self.entropy;
        let (Some(user), Some(password)) = (&link.trunk.username, &link.trunk.password) else {
            return false;
        };
        let proxy = challenge.code.into_u16() == 407;
        let (ask, answer) = if proxy {
            (Name::PROXY_AUTHENTICATE, Name::PROXY_AUTHORIZATION)
        } else {
            (Name::WWW_AUTHENTICATE, Name::AUTHORIZATION)
        };
        let uri = headers::uri_text(&req.uri);
        let method = req.method.to_string();
        let value = headers::all_values(&challenge.headers, &ask)
            .into_iter()
            .chain(challenge.headers.get_raw(&ask).map(|v| v.to_string()))
            .find_map(|c| {
                let cnonce = entropy.tag();
                digest::answer_challenge(&c, &method, &uri, user, password, 1, &cnonce).ok()
            });
        match value {
            Some(v) => {
                req.headers.insert(answer, v);
                true
            }
            None => false,
        }
    }

    /// A retry of `original` (an INVITE to a trunk that the provider challenged): same
    /// dialog identifiers, next CSeq, new branch, with credentials.
    pub(super) fn authorized_retry(
        &mut self,
        trunk: i64,
        original: &Request,
        challenge: &Response,
        transport: Transport,
    ) -> Option<Request> {
        let mut retry = original.clone();
        let cseq = original.cseq().map(|(n, _)| n).unwrap_or(1) + 1;
        retry.headers.remove(&Name::VIA);
        retry.headers.remove(&Name::CSEQ);
        retry.headers.remove(&Name::AUTHORIZATION);
        retry.headers.remove(&Name::PROXY_AUTHORIZATION);
        retry.headers.insert(
            Name::VIA,
            local(&self.settings).via(transport, &mut self.entropy),
        );
        retry
            .headers
            .insert(Name::CSEQ, format!("{cseq} {}", original.method));
        self.authorize(trunk, &mut retry, challenge)
            .then_some(retry)
    }

    /// Registration timers: refresh before expiry, retry after a failure (looking the
    /// host up again when it has no address).
    pub(super) fn trunk_timers(&mut self, now: Instant, id: i64) {
        let Some(link) = self.trunks.get_mut(&id) else {
            return;
        };
        let has_address = !link.addresses.is_empty();
        let step = link.registration.handle_timeout(now, has_address);
        self.registration_step(now, id, step);
    }

    /// Which trunk a new request comes from, if any (see the module docs).
    pub(super) fn trunk_of_request(&self, req: &Request, from: Peer) -> Option<i64> {
        let user = headers::uri_user(&req.uri);
        self.trunks
            .values()
            .find(|l| {
                user.as_deref() == Some(l.contact_user.as_str()) || l.addresses.contains(&from.addr)
            })
            .map(|l| l.trunk.id)
    }

    /// An INVITE to `number` through trunk `trunk`, offering our media on `port`, with
    /// `display` and `caller_number` as caller ID (From and P-Asserted-Identity). `None`
    /// while the trunk has no address.
    pub(super) fn trunk_invite(
        &mut self,
        trunk: i64,
        number: &str,
        display: &str,
        caller_number: &str,
        port: u16,
    ) -> Option<(Request, Peer)> {
        let link = self.trunks.get(&trunk)?;
        let peer = link.peer()?;
        let domain = link.domain();
        let uri: SipUri = format!("sip:{number}@{domain}").parse().ok()?;
        let caller = format!("{} <sip:{caller_number}@{domain}>", super::quoted(display));
        let mut invite = Request::new(Method::INVITE, uri);
        let h = &mut invite.headers;
        h.insert(
            Name::VIA,
            local(&self.settings).via(peer.transport, &mut self.entropy),
        );
        h.insert(Name::MAX_FORWARDS, "70");
        h.insert(Name::FROM, format!("{caller};tag={}", self.entropy.tag()));
        h.insert(Name::TO, format!("<sip:{number}@{domain}>"));
        h.insert(Name::CALL_ID, self.entropy.call_id(&self.domain()));
        h.insert(Name::CSEQ, "1 INVITE");
        h.insert(Name::CONTACT, self.trunk_contact(link, peer.transport));
        h.insert(Name::from("P-Asserted-Identity"), caller);
        h.insert(Name::ALLOW, ALLOW);
        h.insert(Name::USER_AGENT, USER_AGENT);
        let offer = self.offer_on(port);
        super::fork::with_offer(&mut invite, &offer);
        Some((invite, peer))
    }

    /// Every trunk's live state.
    pub fn trunk_statuses(&self, now: Instant) -> Vec<TrunkStatus> {
        let mut v: Vec<TrunkStatus> = self
            .trunks
            .values()
            .map(|l| TrunkStatus {
                id: l.trunk.id,
                name: l.trunk.name.clone(),
                registration: if l.trunk.register {
                    l.registration.state
                } else {
                    RegistrationState::Off
                },
                address: l.addresses.first().copied(),
                status: l.registration.status,
                reason: l.registration.reason.clone(),
                expires_unix: l.registration.expires_at.map(|t| self.unix(t)),
                retry_unix: l
                    .registration
                    .retry_at()
                    .map(|t| self.unix(t).max(self.unix(now))),
            })
            .collect();
        v.sort_by_key(|s| s.id);
        v
    }

    /// Withdraws every registration (the server is stopping).
    pub(super) fn unregister_trunks(&mut self, now: Instant) {
        let ids: Vec<i64> = self.trunks.keys().copied().collect();
        for id in ids {
            self.drop_trunk(now, id);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn literal_hosts_need_no_lookup() {
        assert_eq!(
            literal_address("192.0.2.7", 5070),
            Some("192.0.2.7:5070".parse().unwrap())
        );
        assert_eq!(
            literal_address("[2001:db8::1]", 5060),
            Some("[2001:db8::1]:5060".parse().unwrap())
        );
        assert_eq!(literal_address("sip.example.net", 5060), None);
    }
}
