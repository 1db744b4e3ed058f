//! The live views as typed values: the API serialises them (their field names are the
//! JSON the OpenAPI document describes), the console reads their fields. A misspelt
//! field is a compile error, not a silent default.

use confero_pbx::engine::{
    CallInfo, ConferenceParticipant, InvitationInfo, RegistrationState, TrunkStatus,
};
use confero_pbx::registrar::Binding;
use serde::Serialize;

/// One registered device.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub(crate) struct Registration {
    pub(crate) user: String,
    pub(crate) contact: String,
    pub(crate) transport: String,
    /// Where its REGISTER came from.
    pub(crate) source: String,
    pub(crate) expires_in: u64,
    pub(crate) user_agent: Option<String>,
}

impl Registration {
    pub(crate) fn of(b: &Binding, now_unix: u64) -> Registration {
        Registration {
            user: b.aor.clone(),
            contact: b.contact.clone(),
            transport: b.peer.transport.via_name().to_owned(),
            source: b.peer.addr.to_string(),
            expires_in: b.expires_unix.saturating_sub(now_unix),
            user_agent: b.user_agent.clone(),
        }
    }
}

/// A call between two parties (not a room's).
#[derive(Clone, Debug, PartialEq, Serialize)]
pub(crate) struct Call {
    pub(crate) id: u64,
    pub(crate) caller: String,
    pub(crate) callee: String,
    pub(crate) state: &'static str,
    pub(crate) started_at: u64,
    pub(crate) answered_at: Option<u64>,
}

impl From<CallInfo> for Call {
    fn from(c: CallInfo) -> Call {
        Call {
            id: c.id,
            caller: c.caller,
            callee: c.callee,
            state: c.state,
            started_at: c.started_unix,
            answered_at: c.answered_unix,
        }
    }
}

/// Someone in (or entering, or waiting for) a room.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub(crate) struct Participant {
    pub(crate) id: u64,
    pub(crate) conference_id: i64,
    pub(crate) caller: String,
    pub(crate) caller_name: String,
    pub(crate) is_admin: bool,
    pub(crate) state: &'static str,
    /// Heard by the room (not entering a code, not waiting).
    pub(crate) in_mix: bool,
    pub(crate) muted: bool,
    pub(crate) talking: bool,
    pub(crate) codec: String,
    pub(crate) joined_at: u64,
    pub(crate) packets_received: u64,
    pub(crate) packets_lost: u64,
    pub(crate) loss_percent: f32,
    pub(crate) jitter_ms: f32,
    pub(crate) rtt_ms: Option<f32>,
    pub(crate) rtp_port: u16,
}

impl From<ConferenceParticipant> for Participant {
    fn from(p: ConferenceParticipant) -> Participant {
        Participant {
            id: p.id.0,
            conference_id: p.conference_id,
            caller: p.caller,
            caller_name: p.caller_name,
            is_admin: p.is_admin,
            state: p.state,
            in_mix: p.state == "in_room",
            muted: p.muted,
            talking: p.talking,
            codec: p.codec,
            joined_at: p.joined_unix,
            packets_received: p.stats.packets_received,
            packets_lost: p.stats.packets_lost,
            loss_percent: p.stats.loss_percent,
            jitter_ms: p.stats.jitter_ms,
            rtt_ms: p.stats.rtt_ms,
            rtp_port: p.rtp_port,
        }
    }
}

/// An invitation into a room, and how far it got.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub(crate) struct Invitation {
    pub(crate) id: u64,
    pub(crate) conference_id: i64,
    pub(crate) target: String,
    pub(crate) state: &'static str,
    /// The SIP status that decided a failure.
    pub(crate) status: Option<u16>,
    pub(crate) reason: Option<String>,
    /// The participant it became, once answered.
    pub(crate) participant_id: Option<u64>,
    pub(crate) created_at: u64,
}

impl From<InvitationInfo> for Invitation {
    fn from(i: InvitationInfo) -> Invitation {
        Invitation {
            id: i.id.0,
            conference_id: i.conference_id,
            target: i.target,
            state: i.state.as_str(),
            status: i.status,
            reason: i.reason,
            participant_id: i.participant.map(|p| p.0),
            created_at: i.created_unix,
        }
    }
}

/// A trunk's registration. Times are seconds from now, so clients need no clock.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub(crate) struct Trunk {
    /// The state in words, for people.
    pub(crate) summary: String,
    pub(crate) trunk_id: i64,
    pub(crate) name: String,
    pub(crate) registration: &'static str,
    pub(crate) address: Option<String>,
    pub(crate) status: Option<u16>,
    pub(crate) reason: Option<String>,
    pub(crate) expires_in: Option<u64>,
    pub(crate) retry_in: Option<u64>,
}

impl Trunk {
    pub(crate) fn of(t: &TrunkStatus, now_unix: u64) -> Trunk {
        use RegistrationState as R;
        let summary = match t.registration {
            R::Off => "Not registering".to_owned(),
            R::Resolving => "Looking up the provider's address…".to_owned(),
            R::Registering => "Registering…".to_owned(),
            R::Registered => "Registered".to_owned(),
            R::Failed => match (t.status, &t.reason) {
                (Some(code), Some(reason)) => format!("Failed: {code} {reason}"),
                (_, Some(reason)) => format!("Failed: {reason}"),
                _ => "Failed".to_owned(),
            },
        };
        Trunk {
            summary,
            trunk_id: t.id,
            name: t.name.clone(),
            registration: t.registration.as_str(),
            address: t.address.map(|a| a.to_string()),
            status: t.status,
            reason: t.reason.clone(),
            expires_in: t.expires_unix.map(|u| u.saturating_sub(now_unix)),
            retry_in: t.retry_unix.map(|u| u.saturating_sub(now_unix)),
        }
    }
}

/// A room whose access code someone was guessing in the last hour.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub(crate) struct CodeGuessing {
    pub(crate) conference_id: i64,
    pub(crate) failures_last_hour: u32,
    /// When the administrator was alerted (Unix seconds).
    pub(crate) alerted_at: u64,
}
