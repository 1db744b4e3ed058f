//! The location table: which devices (contacts) are registered for which user.
//!
//! The table is pure data keyed by `(aor, contact)`; [`super::auth`] decides who may change
//! it, [`super::register`] reads REGISTER requests into changes, and the engine turns
//! changes into events so the IO shell can persist them.
//! Time is passed in as both an [`Instant`] (for expiry timers) and Unix seconds (for what
//! is stored and shown), so restarts and tests see the same arithmetic.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use confero_sip::transport::Peer;

/// Shortest registration interval accepted; shorter ones get 423 with Min-Expires.
pub const MIN_EXPIRES: u32 = 60;
/// Longest interval granted; longer requests are shortened to this.
pub const MAX_EXPIRES: u32 = 3600;
/// Interval granted when the phone names none.
pub const DEFAULT_EXPIRES: u32 = 3600;

/// One registered device of a user.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Binding {
    /// The user's SIP username: the address-of-record's user part.
    pub aor: String,
    /// The Contact URI as the device sent it (without header parameters).
    pub contact: String,
    /// When the binding lapses.
    pub expires_at: Instant,
    /// The same moment as Unix seconds, for storage and display.
    pub expires_unix: u64,
    /// Call-ID and CSeq of the REGISTER that made it, to ignore stale reordered requests.
    pub call_id: String,
    /// CSeq of that REGISTER.
    pub cseq: u32,
    /// Where requests for this device are sent: the flow it registered over (NAT-friendly).
    pub peer: Peer,
    /// The device's User-Agent, for the console.
    pub user_agent: Option<String>,
}

impl Binding {
    /// Seconds left, as echoed in `;expires=` of the 200 OK.
    pub fn remaining(&self, now: Instant) -> u32 {
        let secs = self.expires_at.saturating_duration_since(now).as_secs();
        u32::try_from(secs).unwrap_or(u32::MAX)
    }
}

/// What happened to a binding, for persistence and live views.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BindingChange {
    /// Added or refreshed.
    Upserted(Binding),
    /// Removed (expired, unregistered, or its user deleted).
    Removed {
        /// The user's SIP username.
        aor: String,
        /// The Contact URI that went.
        contact: String,
    },
}

/// All bindings of the PBX.
#[derive(Debug, Default)]
pub struct Registrar {
    bindings: BTreeMap<(String, String), Binding>,
    /// The same bindings ordered by expiry, so the next expiry and the lapsed ones are
    /// found without a scan (the engine asks on every packet).
    by_expiry: BTreeSet<(Instant, String, String)>,
    /// Bindings per source address: under overload, REGISTERs from these (refreshes) are
    /// still served and strangers' are not.
    sources: HashMap<SocketAddr, usize>,
}

/// One contact of a REGISTER request, as the engine read it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContactRequest {
    /// The Contact URI.
    pub contact: String,
    /// Requested interval in seconds (already resolved from the contact's `expires`
    /// parameter or the Expires header or the default).
    pub expires: u32,
}

/// A REGISTER that the engine authenticated, reduced to what the table needs.
#[derive(Debug, Clone)]
pub struct RegisterUpdate<'a> {
    /// The user's SIP username.
    pub aor: &'a str,
    /// The REGISTER's Call-ID.
    pub call_id: &'a str,
    /// The REGISTER's CSeq.
    pub cseq: u32,
    /// The flow it came over.
    pub peer: Peer,
    /// Its User-Agent.
    pub user_agent: Option<&'a str>,
    /// `None` means `Contact: *` with `Expires: 0` (remove all).
    pub contacts: Option<Vec<ContactRequest>>,
}

/// Why a REGISTER was refused by the table itself.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum RegisterError {
    /// A non-zero interval under [`MIN_EXPIRES`]: answer 423 with Min-Expires.
    #[error("interval too brief")]
    IntervalTooBrief,
}

impl Registrar {
    /// An empty table.
    pub fn new() -> Self {
        Self::default()
    }

    fn insert(&mut self, binding: Binding) {
        let key = (binding.aor.clone(), binding.contact.clone());
        self.remove(&key);
        self.by_expiry
            .insert((binding.expires_at, key.0.clone(), key.1.clone()));
        *self.sources.entry(binding.peer.addr).or_default() += 1;
        self.bindings.insert(key, binding);
    }

    fn remove(&mut self, key: &(String, String)) -> Option<Binding> {
        let b = self.bindings.remove(key)?;
        self.by_expiry
            .remove(&(b.expires_at, b.aor.clone(), b.contact.clone()));
        self.forget_source(b.peer.addr);
        Some(b)
    }

    fn forget_source(&mut self, addr: SocketAddr) {
        if let Some(n) = self.sources.get_mut(&addr) {
            *n -= 1;
            if *n == 0 {
                self.sources.remove(&addr);
            }
        }
    }

    /// Whether some binding was registered from `addr` (a phone refreshing).
    #[must_use]
    pub fn knows_source(&self, addr: SocketAddr) -> bool {
        self.sources.contains_key(&addr)
    }

    /// Applies one REGISTER (RFC 3261 §10.3 steps 6–8). Returns the changes made.
    /// A REGISTER with the same Call-ID and a CSeq not above the stored one is a stale or
    /// reordered request: it changes nothing for that contact.
    pub fn apply(
        &mut self,
        now: Instant,
        now_unix: u64,
        update: RegisterUpdate<'_>,
    ) -> Result<Vec<BindingChange>, RegisterError> {
        let mut changes = Vec::new();
        let Some(contacts) = update.contacts else {
            let keys: Vec<_> = self
                .bindings
                .range((update.aor.to_owned(), String::new())..)
                .take_while(|((aor, _), _)| aor == update.aor)
                .map(|(k, _)| k.clone())
                .collect();
            for key in keys {
                self.remove(&key);
                changes.push(BindingChange::Removed {
                    aor: key.0,
                    contact: key.1,
                });
            }
            return Ok(changes);
        };
        if contacts
            .iter()
            .any(|c| c.expires != 0 && c.expires < MIN_EXPIRES)
        {
            return Err(RegisterError::IntervalTooBrief);
        }
        for c in contacts {
            let key = (update.aor.to_owned(), c.contact.clone());
            if let Some(old) = self.bindings.get(&key) {
                if old.call_id == update.call_id && update.cseq <= old.cseq {
                    continue;
                }
            }
            if c.expires == 0 {
                if self.remove(&key).is_some() {
                    changes.push(BindingChange::Removed {
                        aor: key.0,
                        contact: key.1,
                    });
                }
                continue;
            }
            let granted = c.expires.min(MAX_EXPIRES);
            let binding = Binding {
                aor: update.aor.to_owned(),
                contact: c.contact,
                expires_at: now + Duration::from_secs(u64::from(granted)),
                expires_unix: now_unix + u64::from(granted),
                call_id: update.call_id.to_owned(),
                cseq: update.cseq,
                peer: update.peer,
                user_agent: update.user_agent.map(str::to_owned),
            };
            self.insert(binding.clone());
            changes.push(BindingChange::Upserted(binding));
        }
        Ok(changes)
    }

    /// Puts back a binding loaded from storage after a restart.
    pub fn restore(&mut self, binding: Binding) {
        self.insert(binding);
    }

    /// Live bindings of one user, in a stable order.
    pub fn contacts_of<'a>(&'a self, aor: &'a str) -> impl Iterator<Item = &'a Binding> + 'a {
        self.bindings
            .range((aor.to_owned(), String::new())..)
            .take_while(move |((a, _), _)| a == aor)
            .map(|(_, b)| b)
    }

    /// Every binding.
    pub fn all(&self) -> impl Iterator<Item = &Binding> {
        self.bindings.values()
    }

    /// Bindings held.
    pub fn len(&self) -> usize {
        self.bindings.len()
    }

    /// Whether none is held.
    pub fn is_empty(&self) -> bool {
        self.bindings.is_empty()
    }

    /// Earliest expiry, for the engine's timer.
    pub fn next_expiry(&self) -> Option<Instant> {
        self.by_expiry.first().map(|(at, _, _)| *at)
    }

    /// Drops lapsed bindings.
    pub fn expire(&mut self, now: Instant) -> Vec<BindingChange> {
        let mut changes = Vec::new();
        while let Some((at, aor, contact)) = self.by_expiry.first().cloned() {
            if at > now {
                break;
            }
            self.by_expiry.pop_first();
            let key = (aor, contact);
            if self.bindings.get(&key).is_some_and(|b| b.expires_at == at) {
                if let Some(b) = self.bindings.remove(&key) {
                    self.forget_source(b.peer.addr);
                }
                changes.push(BindingChange::Removed {
                    aor: key.0,
                    contact: key.1,
                });
            }
        }
        changes
    }

    /// Drops bindings of users that no longer exist (after a new revision is applied).
    pub fn retain_users(&mut self, known_aor: impl Fn(&str) -> bool) -> Vec<BindingChange> {
        let gone: Vec<_> = self
            .bindings
            .keys()
            .filter(|(aor, _)| !known_aor(aor))
            .cloned()
            .collect();
        gone.into_iter()
            .filter_map(|key| self.remove(&key))
            .map(|b| BindingChange::Removed {
                aor: b.aor,
                contact: b.contact,
            })
            .collect()
    }

    /// Drops the bindings that can only be reached over a connection that just closed
    /// (WebSocket phones cannot be called back any other way).
    pub fn connection_closed(
        &mut self,
        conn: confero_sip::transport::ConnId,
        only_if: impl Fn(&Binding) -> bool,
    ) -> Vec<BindingChange> {
        let gone: Vec<_> = self
            .bindings
            .iter()
            .filter(|(_, b)| b.peer.conn == Some(conn) && only_if(b))
            .map(|(k, _)| k.clone())
            .collect();
        gone.into_iter()
            .filter_map(|key| self.remove(&key))
            .map(|b| BindingChange::Removed {
                aor: b.aor,
                contact: b.contact,
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use confero_sip::transport::Transport;

    fn peer(port: u16) -> Peer {
        Peer {
            transport: Transport::Udp,
            addr: ([127, 0, 0, 1], port).into(),
            conn: None,
        }
    }

    fn update<'a>(
        call_id: &'a str,
        cseq: u32,
        contacts: Option<Vec<ContactRequest>>,
    ) -> RegisterUpdate<'a> {
        RegisterUpdate {
            aor: "alice",
            call_id,
            cseq,
            peer: peer(5062),
            user_agent: Some("test"),
            contacts,
        }
    }

    fn contact(uri: &str, expires: u32) -> ContactRequest {
        ContactRequest {
            contact: uri.into(),
            expires,
        }
    }

    #[test]
    fn several_devices_then_wildcard_removal() {
        let now = Instant::now();
        let mut r = Registrar::new();
        r.apply(
            now,
            1000,
            update("a", 1, Some(vec![contact("sip:a@1", 600)])),
        )
        .unwrap();
        r.apply(
            now,
            1000,
            update("b", 1, Some(vec![contact("sip:a@2", 7200)])),
        )
        .unwrap();
        let list: Vec<_> = r.contacts_of("alice").collect();
        assert_eq!(list.len(), 2);
        assert_eq!(list[1].remaining(now), MAX_EXPIRES, "capped");
        assert_eq!(list[0].expires_unix, 1600);
        let removed = r.apply(now, 1000, update("c", 1, None)).unwrap();
        assert_eq!(removed.len(), 2);
        assert!(r.is_empty());
    }

    #[test]
    fn stale_cseq_is_ignored_and_expires_zero_removes() {
        let now = Instant::now();
        let mut r = Registrar::new();
        r.apply(now, 0, update("a", 5, Some(vec![contact("sip:a@1", 600)])))
            .unwrap();
        let changes = r
            .apply(now, 0, update("a", 4, Some(vec![contact("sip:a@1", 0)])))
            .unwrap();
        assert!(changes.is_empty());
        assert_eq!(r.len(), 1);
        let changes = r
            .apply(now, 0, update("a", 6, Some(vec![contact("sip:a@1", 0)])))
            .unwrap();
        assert_eq!(changes.len(), 1);
        assert!(r.is_empty());
    }

    #[test]
    fn too_brief_is_refused_without_change() {
        let now = Instant::now();
        let mut r = Registrar::new();
        let err = r
            .apply(now, 0, update("a", 1, Some(vec![contact("sip:a@1", 10)])))
            .unwrap_err();
        assert_eq!(err, RegisterError::IntervalTooBrief);
        assert!(r.is_empty());
    }

    #[test]
    fn expiry_and_unknown_users() {
        let now = Instant::now();
        let mut r = Registrar::new();
        r.apply(now, 0, update("a", 1, Some(vec![contact("sip:a@1", 60)])))
            .unwrap();
        assert_eq!(r.next_expiry(), Some(now + Duration::from_secs(60)));
        assert!(r.expire(now + Duration::from_secs(59)).is_empty());
        assert_eq!(r.expire(now + Duration::from_secs(60)).len(), 1);
        r.apply(now, 0, update("a", 2, Some(vec![contact("sip:a@1", 60)])))
            .unwrap();
        // A refresh moves the expiry: the old instant no longer removes it.
        r.apply(
            now + Duration::from_secs(30),
            0,
            update("a", 3, Some(vec![contact("sip:a@1", 60)])),
        )
        .unwrap();
        assert!(r.expire(now + Duration::from_secs(60)).is_empty());
        assert_eq!(r.next_expiry(), Some(now + Duration::from_secs(90)));
        assert_eq!(r.retain_users(|aor| aor != "alice").len(), 1);
        assert!(r.is_empty() && r.next_expiry().is_none());
    }
}
