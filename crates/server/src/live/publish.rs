//! Live state the engine publishes for the API: registrations, calls, counters.
//!
//! The engine task writes a fresh copy after every batch that changed something; HTTP
//! handlers read it without ever touching the engine, so a slow client cannot stall calls.

use std::fmt::Write as _;
use std::sync::{RwLock, RwLockReadGuard};

use confero_pbx::engine::{Engine, InvitationId, LegId};
use serde::Serialize;
use tokio::sync::{mpsc, oneshot};

use super::{
    Call, CodeGuessing, Invitation, LiveView, Participant, ParticipantAction, Registration, Trunk,
};

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
        reply: oneshot::Sender<Result<Invitation, String>>,
    },
    CancelInvitation {
        id: u64,
        reply: oneshot::Sender<bool>,
    },
    Lock {
        conference_id: i64,
        locked: bool,
        reply: oneshot::Sender<Result<(), String>>,
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
                let participant = LegId(participant);
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
                    .map_err(|e| e.to_string())
                    .and_then(|id| {
                        engine
                            .invitation(id)
                            .map(Invitation::from)
                            .ok_or_else(|| "the invitation ended at once".to_owned())
                    });
                Box::new(move || {
                    let _ = reply.send(result);
                })
            }
            Control::CancelInvitation { id, reply } => {
                let done = engine.cancel_invitation(now, InvitationId(id));
                Box::new(move || {
                    let _ = reply.send(done);
                })
            }
            Control::Lock {
                conference_id,
                locked,
                reply,
            } => {
                let done = engine
                    .lock_conference(conference_id, locked)
                    .map_err(|e| e.to_string());
                Box::new(move || {
                    let _ = reply.send(done);
                })
            }
        }
    }
}

/// One publication.
#[derive(Default)]
struct Published {
    registrations: Vec<Registration>,
    calls: Vec<Call>,
    participants: Vec<Participant>,
    invitations: Vec<Invitation>,
    trunks: Vec<Trunk>,
    code_guessing: Vec<CodeGuessing>,
    /// Conferences locked now.
    locked: Vec<i64>,
    security: Option<confero_pbx::engine::SecurityStats>,
    engine_revision: i64,
    transactions: usize,
    calls_in_memory: usize,
    rtp_ports: usize,
    rtp_ports_taken_elsewhere: u64,
}

/// The kinds of live events, in the order a new subscriber gets them.
#[derive(Clone, Copy)]
enum Kind {
    Trunks,
    Registrations,
    Calls,
    Participants,
    Invitations,
    CodeGuessing,
}

impl Kind {
    const ALL: [Kind; 6] = [
        Kind::Trunks,
        Kind::Registrations,
        Kind::Calls,
        Kind::Participants,
        Kind::Invitations,
        Kind::CodeGuessing,
    ];

    /// The event's name on the wire (server-sent events).
    fn name(self) -> &'static str {
        match self {
            Kind::Trunks => "trunks",
            Kind::Registrations => "registrations",
            Kind::Calls => "calls",
            Kind::Participants => "participants",
            Kind::Invitations => "invitations",
            Kind::CodeGuessing => "code_guessing",
        }
    }
}

impl Published {
    /// The JSON of one kind of live event (the whole current list), if it differs from
    /// `before`'s (always, without `before`).
    fn event(&self, kind: Kind, before: Option<&Published>) -> Option<String> {
        fn json<T: Serialize + PartialEq>(now: &T, before: Option<&T>) -> Option<String> {
            (before != Some(now))
                .then(|| serde_json::to_string(now).unwrap_or_else(|_| "[]".to_owned()))
        }
        match kind {
            Kind::Trunks => json(&self.trunks, before.map(|b| &b.trunks)),
            Kind::Registrations => json(&self.registrations, before.map(|b| &b.registrations)),
            Kind::Calls => json(&self.calls, before.map(|b| &b.calls)),
            Kind::Participants => json(&self.participants, before.map(|b| &b.participants)),
            Kind::Invitations => json(&self.invitations, before.map(|b| &b.invitations)),
            Kind::CodeGuessing => json(&self.code_guessing, before.map(|b| &b.code_guessing)),
        }
    }
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
        let next = Published {
            registrations: engine
                .registrar()
                .all()
                .map(|b| Registration::of(b, now_unix))
                .collect(),
            calls: engine.calls().into_iter().map(Call::from).collect(),
            participants: engine
                .conference_participants()
                .into_iter()
                .map(Participant::from)
                .collect(),
            invitations: engine
                .invitations()
                .into_iter()
                .map(Invitation::from)
                .collect(),
            trunks: engine
                .trunk_statuses(std::time::Instant::now())
                .iter()
                .map(|t| Trunk::of(t, now_unix))
                .collect(),
            code_guessing: engine
                .code_guessing(now_unix)
                .into_iter()
                .map(
                    |(conference_id, failures_last_hour, alerted_at)| CodeGuessing {
                        conference_id,
                        failures_last_hour,
                        alerted_at,
                    },
                )
                .collect(),
            locked: engine.locked_conferences(),
            security: Some(engine.security_stats()),
            engine_revision: engine.config_revision(),
            transactions: engine.transaction_count(),
            calls_in_memory: engine.call_count(),
            rtp_ports: engine.rtp_ports_in_use(),
            rtp_ports_taken_elsewhere: engine.rtp_ports_taken_elsewhere(),
        };
        let mut p = self.inner.write().unwrap_or_else(|e| e.into_inner());
        if self.events.receiver_count() > 0 {
            for kind in Kind::ALL {
                if let Some(json) = next.event(kind, Some(&p)) {
                    let _ = self.events.send((kind.name().to_owned(), json));
                }
            }
        }
        *p = next;
    }

    /// Sends the SIP task an action made with its reply channel; the answer to wait for,
    /// or `None` when the task is not taking actions (its queue is full or it is gone).
    fn ask<T>(
        &self,
        action: impl FnOnce(oneshot::Sender<T>) -> Control,
    ) -> Option<oneshot::Receiver<T>> {
        let (reply, rx) = oneshot::channel();
        self.control.try_send(action(reply)).ok()?;
        Some(rx)
    }

    fn read(&self) -> RwLockReadGuard<'_, Published> {
        self.inner.read().unwrap_or_else(|e| e.into_inner())
    }
}

impl LiveView for LiveState {
    fn registrations(&self) -> Vec<Registration> {
        self.read().registrations.clone()
    }

    fn calls(&self) -> Vec<Call> {
        self.read().calls.clone()
    }

    fn code_guessing(&self) -> Vec<CodeGuessing> {
        self.read().code_guessing.clone()
    }

    fn participants(&self, conference_id: i64) -> Vec<Participant> {
        self.read()
            .participants
            .iter()
            .filter(|p| p.conference_id == conference_id)
            .cloned()
            .collect()
    }

    fn snapshot_events(&self) -> Vec<(String, String)> {
        let p = self.read();
        Kind::ALL
            .iter()
            .filter_map(|&kind| Some((kind.name().to_owned(), p.event(kind, None)?)))
            .collect()
    }

    fn subscribe(&self) -> Option<tokio::sync::broadcast::Receiver<(String, String)>> {
        Some(self.events.subscribe())
    }

    fn locked(&self, conference_id: i64) -> bool {
        self.read().locked.contains(&conference_id)
    }

    fn set_locked(
        &self,
        conference_id: i64,
        locked: bool,
    ) -> Option<oneshot::Receiver<Result<(), String>>> {
        self.ask(|reply| Control::Lock {
            conference_id,
            locked,
            reply,
        })
    }

    fn participant_action(
        &self,
        conference_id: i64,
        participant: u64,
        action: ParticipantAction,
    ) -> Option<oneshot::Receiver<bool>> {
        self.ask(|reply| Control::Participant {
            conference_id,
            participant,
            action,
            reply,
        })
    }

    fn invite(
        &self,
        conference_id: i64,
        target: String,
        timeout: std::time::Duration,
    ) -> Option<oneshot::Receiver<Result<Invitation, String>>> {
        self.ask(|reply| Control::Invite {
            conference_id,
            target,
            timeout,
            reply,
        })
    }

    fn trunk(&self, id: i64) -> Option<Trunk> {
        self.read()
            .trunks
            .iter()
            .find(|t| t.trunk_id == id)
            .cloned()
    }

    fn invitation(&self, id: u64) -> Option<Invitation> {
        self.read().invitations.iter().find(|i| i.id == id).cloned()
    }

    fn cancel_invitation(&self, id: u64) -> Option<oneshot::Receiver<bool>> {
        self.ask(|reply| Control::CancelInvitation { id, reply })
    }

    fn metrics(&self) -> String {
        let p = self.read();
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
        counters(
            &mut out,
            &[(
                "confero_rtp_ports_taken_elsewhere_total",
                "RTP port pairs passed over because another program held them.",
                p.rtp_ports_taken_elsewhere,
            )],
        );
        let _ = writeln!(out, "# TYPE confero_conference_participants gauge");
        let _ = writeln!(
            out,
            "confero_conference_participants {}",
            p.participants.len()
        );
        if let Some(sec) = p.security {
            let security = [
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
            ];
            counters(&mut out, &security);
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

/// Prometheus counters, each with its help line: (name, help, value).
pub(crate) fn counters(out: &mut String, counters: &[(&str, &str, u64)]) {
    for (name, help, value) in counters {
        metric(out, name, "counter", help, [(String::new(), value)]);
    }
}

/// One Prometheus metric of `kind` (counter, gauge): its help and type lines, then each
/// sample as (labels, value), the labels written as they go (`{thread="0"}`, or empty).
pub(crate) fn metric<V: std::fmt::Display>(
    out: &mut String,
    name: &str,
    kind: &str,
    help: &str,
    samples: impl IntoIterator<Item = (String, V)>,
) {
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} {kind}");
    for (labels, value) in samples {
        let _ = writeln!(out, "{name}{labels} {value}");
    }
}
