//! The engine's live state as the HTTP side reads it: registrations, calls, rooms'
//! participants, invitations, trunks, alerts; and the actions it may ask of the engine.
//!
//! The engine task publishes ([`publish::LiveState`]) after it changes; handlers read the
//! last publication and never wait on the engine.

pub(crate) mod publish;
pub(crate) mod views;

pub(crate) use views::{Call, CodeGuessing, Invitation, Participant, Registration, Trunk};

/// Live state published by the engine, read by the API.
pub(crate) trait LiveView: Send + Sync + 'static {
    fn registrations(&self) -> Vec<Registration>;
    fn calls(&self) -> Vec<Call>;
    /// Extra Prometheus text lines appended to /metrics.
    fn metrics(&self) -> String;
    /// Everyone in (or entering, or waiting for) conference `id`.
    fn participants(&self, _conference_id: i64) -> Vec<Participant> {
        Vec::new()
    }
    /// Rooms whose access code someone was guessing in the last hour.
    fn code_guessing(&self) -> Vec<CodeGuessing> {
        Vec::new()
    }
    /// Starts an invitation from a room; resolves to the invitation as JSON, or to why it
    /// could not start.
    fn invite(
        &self,
        _conference_id: i64,
        _target: String,
        _timeout: std::time::Duration,
    ) -> Option<tokio::sync::oneshot::Receiver<Result<Invitation, String>>> {
        None
    }
    /// A trunk's live registration state, once the engine has it.
    fn trunk(&self, _id: i64) -> Option<Trunk> {
        None
    }
    /// An invitation's progress, while it is remembered.
    fn invitation(&self, _id: u64) -> Option<Invitation> {
        None
    }
    /// Cancels a ringing invitation; false when it already ended.
    fn cancel_invitation(&self, _id: u64) -> Option<tokio::sync::oneshot::Receiver<bool>> {
        None
    }
    /// The current state of every kind of live event, sent first to a new subscriber so
    /// that a page (re)connecting after a restart starts from the truth.
    fn snapshot_events(&self) -> Vec<(String, String)> {
        Vec::new()
    }
    /// Live changes as server-sent events: `(kind, json)` pairs.
    fn subscribe(&self) -> Option<tokio::sync::broadcast::Receiver<(String, String)>> {
        None
    }
    /// Whether conference `id` is locked now.
    fn locked(&self, _conference_id: i64) -> bool {
        false
    }
    /// Locks or unlocks conference `id` for new callers; resolves to why it could not be
    /// done. `None` when live actions are unavailable.
    fn set_locked(
        &self,
        _conference_id: i64,
        _locked: bool,
    ) -> Option<tokio::sync::oneshot::Receiver<Result<(), String>>> {
        None
    }
    /// Mute, unmute or kick a participant; resolves to false when there is no such
    /// participant in that room. `None` when live actions are unavailable.
    fn participant_action(
        &self,
        _conference_id: i64,
        _participant: u64,
        _action: ParticipantAction,
    ) -> Option<tokio::sync::oneshot::Receiver<bool>> {
        None
    }
}

/// What the console can do to a participant.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum ParticipantAction {
    Mute,
    Unmute,
    Kick,
}
