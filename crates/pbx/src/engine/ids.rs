//! Typed handles for what the engine keeps, the timers it sets, and who owns each client
//! transaction: a timer or a response finds its owner by its type, never by probing maps.

pub use confero_media::bridge::LegId;
pub(super) use confero_media::idmap::IdMap;

macro_rules! id {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub struct $name(pub u64);

        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                self.0.fmt(f)
            }
        }
    };
}

id!(
    /// A two-party call (direct or anchored media).
    CallId
);
id!(
    /// An invitation from a room to a phone.
    InvitationId
);

/// Hands out ids. One sequence for every kind, so that the numbers the API shows (calls,
/// invitations, participants) never repeat across kinds.
#[derive(Debug)]
pub(super) struct Ids {
    next: u64,
}

impl Ids {
    pub(super) fn new() -> Ids {
        Ids { next: 1 }
    }

    fn next(&mut self) -> u64 {
        let n = self.next;
        self.next += 1;
        n
    }

    pub(super) fn call(&mut self) -> CallId {
        CallId(self.next())
    }

    pub(super) fn invitation(&mut self) -> InvitationId {
        InvitationId(self.next())
    }

    pub(super) fn leg(&mut self) -> LegId {
        LegId(self.next())
    }
}

/// Why the engine wants to be woken, and for whom. A timer whose owner is gone, or whose
/// deadline moved, finds nothing to do: timers are never cancelled, only ignored.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(super) enum Timer {
    /// Ring timeout, 2xx retransmission, forgetting an ended call.
    Call(CallId),
    /// No answer, forgetting a finished invitation.
    Invitation(InvitationId),
    /// A trunk's next REGISTER (by its configuration id).
    Trunk(i64),
    /// A browser's offer the media bridge has not answered in time.
    BrowserAnswer(LegId),
    /// 2xx retransmission of a leg the PBX answered.
    Leg(LegId),
}

/// Who a client transaction belongs to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Owner {
    Call(CallId),
    Invitation(InvitationId),
    /// A BYE, NOTIFY or re-INVITE on a leg the PBX answered.
    Leg(LegId),
    Trunk(i64),
}

/// What each user has going, by extension. The per-user call limit is checked on every
/// INVITE; counting by scanning every call of every user made each INVITE cost more the
/// more calls the whole PBX held (at 2,000 held calls it was a tenth of the SIP task).
#[derive(Debug)]
pub(super) struct ByUser<Id> {
    map: std::collections::HashMap<String, IdMap<Id, ()>>,
}

impl<Id> Default for ByUser<Id> {
    fn default() -> Self {
        ByUser {
            map: std::collections::HashMap::new(),
        }
    }
}

impl<Id: Copy + Eq + std::hash::Hash> ByUser<Id> {
    pub(super) fn add(&mut self, user: &str, id: Id) {
        self.map.entry(user.to_owned()).or_default().insert(id, ());
    }

    pub(super) fn remove(&mut self, user: &str, id: Id) {
        if let Some(ids) = self.map.get_mut(user) {
            ids.remove(&id);
            if ids.is_empty() {
                self.map.remove(user);
            }
        }
    }

    pub(super) fn of<'a>(&'a self, user: &str) -> impl Iterator<Item = Id> + 'a {
        self.map
            .get(user)
            .into_iter()
            .flat_map(|ids| ids.keys().copied())
    }
}
