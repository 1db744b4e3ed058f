//! Live state the engine publishes for the API: registrations, calls, counters.
//!
//! The engine task writes a fresh copy after every batch that changed something; HTTP
//! handlers read it without ever touching the engine, so a slow client cannot stall calls.

use std::fmt::Write as _;
use std::sync::RwLock;

use confero_pbx::engine::Engine;
use serde_json::{json, Value};
use tokio::sync::{mpsc, oneshot};

use super::{LiveView, ParticipantAction};

/// An action from the API that only the engine task may carry out.
#[derive(Debug)]
pub(crate) enum Control {
    Participant {
        conference_id: i64,
        participant: u64,
        action: ParticipantAction,
        reply: oneshot::Sender<bool>,
    },
    Invite {
        conference_id: i64,
        target: String,
        timeout: std::time::Duration,
        reply: oneshot::Sender<Result<Value, String>>,
    },
    CancelInvitation {
        id: u64,
        reply: oneshot::Sender<bool>,
    },
}

impl Control {
    /// Carries the action out on the engine; returns the API's answer, to be sent once the
    /// live state is published (a client may read what it just did at once).
    pub(crate) fn run(self, engine: &mut Engine, now: std::time::Instant) -> Box<dyn FnOnce()> {
        match self {
            Control::Participant {
                conference_id,
                participant,
                action,
                reply,
            } => {
                let in_room = engine.participant_room(participant) == Some(conference_id);
                let done = in_room
                    && match action {
                        ParticipantAction::Mute => engine.mute_participant(now, participant, true),
                        ParticipantAction::Unmute => {
                            engine.mute_participant(now, participant, false)
                        }
                        ParticipantAction::Kick => engine.kick_participant(now, participant),
                    };
                Box::new(move || {
                    let _ = reply.send(done);
                })
            }
            Control::Invite {
                conference_id,
                target,
                timeout,
                reply,
            } => {
                let result = engine
                    .invite(now, conference_id, &target, timeout)
                    .map(|id| {
                        engine
                            .invitation(id)
                            .map(invitation_json)
                            .unwrap_or(Value::Null)
                    })
                    .map_err(|e| e.to_string());
                Box::new(move || {
                    let _ = reply.send(result);
                })
            }
            Control::CancelInvitation { id, reply } => {
                let done = engine.cancel_invitation(now, id);
                Box::new(move || {
                    let _ = reply.send(done);
                })
            }
        }
    }
}

fn invitation_json(i: confero_pbx::engine::InvitationInfo) -> Value {
    json!({
        "id": i.id,
        "conference_id": i.conference_id,
        "target": i.target,
        "state": i.state.as_str(),
        "status": i.status,
        "reason": i.reason,
        "participant_id": i.participant,
        "created_at": i.created_unix,
    })
}

/// A trunk's live state. Times are seconds from now, so clients need no clock.
fn trunk_json(t: &confero_pbx::engine::TrunkStatus, now_unix: u64) -> Value {
    use confero_pbx::engine::RegistrationState as R;
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
    json!({
        "summary": summary,
        "trunk_id": t.id,
        "name": t.name,
        "registration": t.registration.as_str(),
        "address": t.address.map(|a| a.to_string()),
        "status": t.status,
        "reason": t.reason,
        "expires_in": t.expires_unix.map(|u| u.saturating_sub(now_unix)),
        "retry_in": t.retry_unix.map(|u| u.saturating_sub(now_unix)),
    })
}

#[derive(Default)]
struct Published {
    registrations: Vec<Value>,
    calls: Vec<Value>,
    participants: Vec<(i64, Value)>,
    invitations: Vec<(u64, Value)>,
    trunks: Vec<(i64, Value)>,
    code_guessing: Vec<Value>,
    security: Option<confero_pbx::engine::SecurityStats>,
    engine_revision: i64,
    transactions: usize,
    calls_in_memory: usize,
    rtp_ports: usize,
}

/// Shared between the engine task (writer) and the API (readers).
pub(crate) struct LiveState {
    inner: RwLock<Published>,
    control: mpsc::Sender<Control>,
    events: tokio::sync::broadcast::Sender<(String, String)>,
}

impl LiveState {
    pub(crate) fn new(control: mpsc::Sender<Control>) -> Self {
        Self {
            inner: RwLock::default(),
            control,
            events: tokio::sync::broadcast::channel(64).0,
        }
    }

    pub(crate) fn update(&self, engine: &Engine, now_unix: u64) {
        let registrations = engine
            .registrar()
            .all()
            .map(|b| {
                json!({
                    "user": b.aor,
                    "contact": b.contact,
                    "transport": b.peer.transport.via_name(),
                    "source": b.peer.addr.to_string(),
                    "expires_in": b.expires_unix.saturating_sub(now_unix),
                    "user_agent": b.user_agent,
                })
            })
            .collect();
        let calls = engine
            .calls()
            .into_iter()
            .map(|c| {
                json!({
                    "id": c.id,
                    "caller": c.caller,
                    "callee": c.callee,
                    "state": c.state,
                    "started_at": c.started_unix,
                    "answered_at": c.answered_unix,
                })
            })
            .collect();
        let participants: Vec<(i64, Value)> = engine
            .conference_participants()
            .into_iter()
            .map(|p| {
                (
                    p.conference_id,
                    json!({
                        "id": p.id,
                        "conference_id": p.conference_id,
                        "caller": p.caller,
                        "caller_name": p.caller_name,
                        "is_admin": p.is_admin,
                        "state": p.state,
                        "in_mix": p.state == "in_room",
                        "muted": p.muted,
                        "talking": p.talking,
                        "codec": p.codec,
                        "joined_at": p.joined_unix,
                        "packets_received": p.stats.packets_received,
                        "packets_lost": p.stats.packets_lost,
                        "loss_percent": p.stats.loss_percent,
                        "jitter_ms": p.stats.jitter_ms,
                        "rtt_ms": p.stats.rtt_ms,
                        "rtp_port": p.rtp_port,
                    }),
                )
            })
            .collect();
        let invitations: Vec<(u64, Value)> = engine
            .invitations()
            .into_iter()
            .map(|i| (i.id, invitation_json(i)))
            .collect();
        let trunks: Vec<(i64, Value)> = engine
            .trunk_statuses(std::time::Instant::now())
            .into_iter()
            .map(|t| (t.id, trunk_json(&t, now_unix)))
            .collect();
        let code_guessing: Vec<Value> = engine
            .code_guessing(now_unix)
            .into_iter()
            .map(|(room, failures, at)| {
                json!({
                    "conference_id": room,
                    "failures_last_hour": failures,
                    "alerted_at": at,
                })
            })
            .collect();
        let mut p = self.inner.write().unwrap_or_else(|e| e.into_inner());
        if self.events.receiver_count() > 0 {
            let all_participants: Vec<&Value> = participants.iter().map(|(_, v)| v).collect();
            for (kind, now, before) in [
                (
                    "registrations",
                    json!(registrations),
                    json!(p.registrations),
                ),
                ("calls", json!(calls), json!(p.calls)),
                (
                    "participants",
                    json!(all_participants),
                    json!(p.participants.iter().map(|(_, v)| v).collect::<Vec<_>>()),
                ),
                (
                    "invitations",
                    json!(invitations.iter().map(|(_, v)| v).collect::<Vec<_>>()),
                    json!(p.invitations.iter().map(|(_, v)| v).collect::<Vec<_>>()),
                ),
                (
                    "trunks",
                    json!(trunks.iter().map(|(_, v)| v).collect::<Vec<_>>()),
                    json!(p.trunks.iter().map(|(_, v)| v).collect::<Vec<_>>()),
                ),
                (
                    "code_guessing",
                    json!(code_guessing),
                    json!(p.code_guessing),
                ),
            ] {
                if now != before {
                    let _ = self.events.send((kind.to_owned(), now.to_string()));
                }
            }
        }
        *p = Published {
            registrations,
            calls,
            participants,
            invitations,
            trunks,
            code_guessing,
            security: Some(engine.security_stats()),
            engine_revision: engine.config_revision(),
            transactions: engine.transaction_count(),
            calls_in_memory: engine.call_count(),
            rtp_ports: engine.rtp_ports_in_use(),
        };
    }
}

impl LiveView for LiveState {
    fn registrations(&self) -> Vec<Value> {
        self.inner
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .registrations
            .clone()
    }

    fn calls(&self) -> Vec<Value> {
        self.inner
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .calls
            .clone()
    }

    fn code_guessing(&self) -> Vec<Value> {
        self.inner
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .code_guessing
            .clone()
    }

    fn participants(&self, conference_id: i64) -> Vec<Value> {
        self.inner
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .participants
            .iter()
            .filter(|(c, _)| *c == conference_id)
            .map(|(_, v)| v.clone())
            .collect()
    }

    fn snapshot_events(&self) -> Vec<(String, String)> {
        let p = self.inner.read().unwrap_or_else(|e| e.into_inner());
        let participants: Vec<&Value> = p.participants.iter().map(|(_, v)| v).collect();
        let invitations: Vec<&Value> = p.invitations.iter().map(|(_, v)| v).collect();
        let trunks: Vec<&Value> = p.trunks.iter().map(|(_, v)| v).collect();
        vec![
            ("trunks".into(), json!(trunks).to_string()),
            ("registrations".into(), json!(p.registrations).to_string()),
            ("calls".into(), json!(p.calls).to_string()),
            ("participants".into(), json!(participants).to_string()),
            ("invitations".into(), json!(invitations).to_string()),
            ("code_guessing".into(), json!(p.code_guessing).to_string()),
        ]
    }

    fn subscribe(&self) -> Option<tokio::sync::broadcast::Receiver<(String, String)>> {
        Some(self.events.subscribe())
    }

    fn participant_action(
        &self,
        conference_id: i64,
        participant: u64,
        action: ParticipantAction,
    ) -> Option<oneshot::Receiver<bool>> {
        let (reply, rx) = oneshot::channel();
        self.control
            .try_send(Control::Participant {
                conference_id,
                participant,
                action,
                reply,
            })
            .ok()?;
        Some(rx)
    }

    fn invite(
        &self,
        conference_id: i64,
        target: String,
        timeout: std::time::Duration,
    ) -> Option<oneshot::Receiver<Result<Value, String>>> {
        let (reply, rx) = oneshot::channel();
        self.control
            .try_send(Control::Invite {
                conference_id,
                target,
                timeout,
                reply,
            })
            .ok()?;
        Some(rx)
    }

    fn trunk(&self, id: i64) -> Option<Value> {
        self.inner
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .trunks
            .iter()
            .find(|(t, _)| *t == id)
            .map(|(_, v)| v.clone())
    }

    fn invitation(&self, id: u64) -> Option<Value> {
        self.inner
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .invitations
            .iter()
            .find(|(i, _)| *i == id)
            .map(|(_, v)| v.clone())
    }

    fn cancel_invitation(&self, id: u64) -> Option<oneshot::Receiver<bool>> {
        let (reply, rx) = oneshot::channel();
        self.control
            .try_send(Control::CancelInvitation { id, reply })
            .ok()?;
        Some(rx)
    }

    fn metrics(&self) -> String {
        let p = self.inner.read().unwrap_or_else(|e| e.into_inner());
        let mut out = String::new();
        let _ = writeln!(
            out,
            "# HELP confero_engine_config_revision The production revision calls are routed by."
        );
        let _ = writeln!(out, "# TYPE confero_engine_config_revision gauge");
        let _ = writeln!(out, "confero_engine_config_revision {}", p.engine_revision);
        let _ = writeln!(out, "# TYPE confero_registrations gauge");
        let _ = writeln!(out, "confero_registrations {}", p.registrations.len());
        let _ = writeln!(out, "# TYPE confero_calls gauge");
        let _ = writeln!(out, "confero_calls {}", p.calls.len());
        let _ = writeln!(out, "# TYPE confero_sip_transactions gauge");
        let _ = writeln!(out, "confero_sip_transactions {}", p.transactions);
        let _ = writeln!(out, "# TYPE confero_calls_in_memory gauge");
        let _ = writeln!(out, "confero_calls_in_memory {}", p.calls_in_memory);
        let _ = writeln!(out, "# TYPE confero_rtp_ports_in_use gauge");
        let _ = writeln!(out, "confero_rtp_ports_in_use {}", p.rtp_ports);
        let _ = writeln!(out, "# TYPE confero_conference_participants gauge");
        let _ = writeln!(
            out,
            "confero_conference_participants {}",
            p.participants.len()
        );
        if let Some(sec) = p.security {
            for (name, help, value) in [
                (
                    "confero_sip_auth_failures_total",
                    "Wrong SIP passwords and unknown SIP usernames.",
                    sec.auth.failures,
                ),
                (
                    "confero_sip_auth_refused_total",
                    "SIP requests refused unchecked after too many wrong passwords.",
                    sec.auth.refused,
                ),
                (
                    "confero_sip_auth_replays_total",
                    "Right digests whose nonce-count was already spent (replays).",
                    sec.auth.replays,
                ),
                (
                    "confero_access_code_failures_total",
                    "Wrong access codes keyed into rooms.",
                    sec.codes.wrong,
                ),
                (
                    "confero_access_code_refused_total",
                    "Callers told to try again later after too many wrong access codes.",
                    sec.codes.refused,
                ),
                (
                    "confero_sip_overload_refusals_total",
                    "New SIP requests refused with 503 while the server was overloaded.",
                    sec.overload_refusals,
                ),
            ] {
                let _ = writeln!(out, "# HELP {name} {help}");
                let _ = writeln!(out, "# TYPE {name} counter");
                let _ = writeln!(out, "{name} {value}");
            }
        }
        let _ = writeln!(
            out,
            "# HELP confero_access_code_guessing_rooms Rooms whose access code was being guessed in the last hour."
        );
        let _ = writeln!(out, "# TYPE confero_access_code_guessing_rooms gauge");
        let _ = writeln!(
            out,
            "confero_access_code_guessing_rooms {}",
            p.code_guessing.len()
        );
        out
    }
}
