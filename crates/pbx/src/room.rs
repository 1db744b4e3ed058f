//! Conference rooms: the digital receptionist, access codes, waiting for the
//! administrator, and who is in the mix — as one sans-IO state machine.
//!
//! The signalling engine tells it who arrived ([`Rooms::handle_join`]), what they keyed
//! ([`Rooms::handle_digit`]), when a prompt finished ([`Rooms::handle_playback_done`]) and
//! who left; time comes in through [`Rooms::handle_timeout`]. Out come
//! [`RoomCommand`]s for the media bridge (play, mix, tone) and for signalling (hang up).
//! Every participant is in exactly one [`Stage`]; each transition is a method below, so a
//! reader can follow a caller from "enter the access code" to the mix.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::time::{Duration, Instant};

use crate::config::{AdminLeaves, Conference};
use crate::guard::{Guard, Limit, Policy, Verdict};

/// A call leg answered by a room (the engine's numbering).
pub use confero_media::bridge::LegId;
use confero_media::idmap::IdMap;

/// Wrong codes before the receptionist says goodbye.
pub const MAX_CODE_ATTEMPTS: u8 = 3;
/// Digits kept before `#`; more counts as a wrong attempt (nobody's code is this long).
pub const MAX_CODE_DIGITS: usize = 20;
/// Silence between digits after which what was typed is checked as if `#` came.
pub const INTER_DIGIT_TIMEOUT: Duration = Duration::from_secs(8);
/// Silence after the prompt with no digit at all: the prompt is repeated (one attempt).
pub const NO_INPUT_TIMEOUT: Duration = Duration::from_secs(12);
/// A prompt whose end the media bridge never reports is taken as finished after this.
pub const PLAYBACK_GUARD: Duration = Duration::from_secs(30);

const HOUR: Duration = Duration::from_secs(3600);

/// How access-code guessing is limited across calls (see [`crate::guard`]). A caller gets
/// at most 30 wrong codes an hour on a room (60 across rooms), waiting 5 s, then 10, 20…
/// up to 2 min between codes after the first three; a room takes at most 300 an hour from
/// everyone who never entered it, with doubling waits after 50, when its administrator is
/// alerted. Whoever entered a room with its code in the last 30 days is never held back by
/// others' guessing.
pub const ACCESS_CODE_POLICY: Policy = Policy {
    pair: Limit {
        free: 3,
        budget: 30,
        period: HOUR,
        first_delay: Duration::from_secs(5),
        max_delay: Duration::from_secs(120),
    },
    source: Some(Limit {
        free: 6,
        budget: 60,
        period: HOUR,
        first_delay: Duration::from_secs(5),
        max_delay: Duration::from_secs(120),
    }),
    target: Limit {
        free: ROOM_ALERT_FAILURES,
        budget: 300,
        period: HOUR,
        first_delay: Duration::from_secs(1),
        max_delay: Duration::from_secs(30),
    },
    trust_for: Duration::from_secs(30 * 24 * 3600),
    cap: 20_000,
};
/// Wrong codes in an hour on one room from which its administrator is alerted.
pub const ROOM_ALERT_FAILURES: u32 = 50;
/// How often a room under attack is reported again.
const ALERT_EVERY: Duration = Duration::from_secs(600);
/// The longest a caller is kept waiting for a code to be checked; beyond it they are told
/// to try again later.
pub const MAX_CODE_WAIT: Duration = Duration::from_secs(30);

pub use confero_media::bridge::Prompt;

/// What the room machine asks of the media bridge and of signalling.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RoomCommand {
    /// Play these to one leg (it hears nothing else meanwhile); when they end, play hold
    /// music in a loop if `then_music`, else silence. The media bridge reports the end
    /// with a playback-done event either way.
    Play {
        /// The leg that hears them.
        leg: LegId,
        /// Played in order.
        prompts: Vec<Prompt>,
        /// Hold music after them, else silence.
        then_music: bool,
    },
    /// Put the leg in its room's mix (it hears the room and is heard).
    Mix {
        /// The leg that joins.
        leg: LegId,
        /// Its room's id.
        room: i64,
    },
    /// Take the leg out of the mix (before playing to it alone).
    Unmix {
        /// The leg that leaves the mix.
        leg: LegId,
    },
    /// A short tone everyone in the room's mix hears.
    RoomTone {
        /// The room whose mix hears it.
        room: i64,
        /// A join or leave tone.
        tone: Prompt,
    },
    /// Mute or unmute a leg in its room's mix.
    Mute {
        /// The leg.
        leg: LegId,
        /// Heard by nobody, while still hearing the room.
        muted: bool,
    },
    /// End the call (signalling sends BYE, media closes).
    Hangup {
        /// The leg.
        leg: LegId,
    },
    /// Someone is guessing the room's access code: `failures` wrong codes in the last hour
    /// (for the administrator: event, console, metrics).
    CodeGuessing {
        /// The room's id.
        room: i64,
        /// Wrong codes keyed into it in the last hour.
        failures: u32,
    },
}

/// Where a participant is in the flow.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Stage {
    /// The receptionist is asking for the access code.
    EnteringCode(CodeEntry),
    /// Playing an announcement; what follows when it ends.
    Announcing(AfterAnnouncement),
    /// Waiting for the administrator, hearing music.
    Waiting,
    /// In the mix.
    InRoom,
}

/// Where a caller is in keying the access code.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CodeEntry {
    digits: String,
    failures: u8,
    /// The prompt is still playing (digits barge in and are kept).
    prompt_playing: bool,
    /// When typing or waiting times out, or the held check is due.
    deadline: Option<Instant>,
    /// The code is typed but its check is held back (too many wrong codes lately): digits
    /// are ignored until `deadline`.
    held: bool,
}

/// What follows an announcement played to one leg.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AfterAnnouncement {
    /// Into the mix.
    Mix,
    /// Hang up (goodbye, room closed, conference ended).
    Hangup,
}

/// A participant as shown in live views.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ParticipantInfo {
    /// The leg.
    pub leg: LegId,
    /// Its room's id.
    pub room: i64,
    /// Who calls, as shown.
    pub caller: String,
    /// Dialled in from the room's administrator extension.
    pub is_admin: bool,
    /// Where it is in the flow (`entering_code`, `waiting`, `in_room`…).
    pub state: &'static str,
    /// Muted by an administrator.
    pub muted: bool,
}

#[derive(Debug)]
struct Participant {
    room: i64,
    caller: String,
    /// Whom wrong codes count against ([`ACCESS_CODE_POLICY`]); `None` for someone the
    /// room invited (no code is asked, and a lock does not keep them out).
    guesser: Option<String>,
    is_admin: bool,
    stage: Stage,
    muted: bool,
    /// Guard against a playback-done event that never comes.
    playback_deadline: Option<Instant>,
    /// Numbers each Play, so that the end of an earlier prompt is not taken for the end
    /// of the one that replaced it.
    playback_seq: u32,
}

#[derive(Debug, Default)]
struct Room {
    config: Option<Conference>,
    members: BTreeSet<LegId>,
    in_mix: BTreeSet<LegId>,
    /// Locked by an administrator: callers are turned away, except the room's
    /// administrator and those it invites. It lasts as long as someone is in the room.
    locked: bool,
}

/// Why a room could not be locked or unlocked.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum LockError {
    /// Nobody is in the room: a lock belongs to a conference in progress.
    #[error("nobody is in this conference: a lock lasts while someone is in it")]
    Empty,
}

/// Every room and its participants.
#[derive(Debug, Default)]
pub struct Rooms {
    rooms: IdMap<i64, Room>,
    legs: IdMap<LegId, Participant>,
    timers: BTreeMap<(Instant, LegId), ()>,
    commands: VecDeque<RoomCommand>,
    /// Wrong access codes across calls; made at the first join (its clock starts there).
    guard: Option<Guard<String, i64>>,
    /// When each room's administrator was last alerted of guessing.
    alerted: IdMap<i64, Instant>,
    stats: CodeStats,
}

/// Access-code counters since start (for metrics).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CodeStats {
    /// Wrong codes checked.
    pub wrong: u64,
    /// Callers told to try again later.
    pub refused: u64,
}

impl Rooms {
    /// No room, nobody in one.
    pub fn new() -> Self {
        Self::default()
    }

    /// Access-code counters since start.
    #[must_use]
    pub fn code_stats(&self) -> CodeStats {
        self.stats
    }

    /// The next thing for media or signalling to do.
    #[must_use]
    pub fn poll_command(&mut self) -> Option<RoomCommand> {
        self.commands.pop_front()
    }

    /// When [`Rooms::handle_timeout`] must next be called.
    #[must_use]
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.timers.keys().next().map(|(at, _)| *at)
    }

    /// Everyone in room `room`.
    pub fn participants(&self, room: i64) -> Vec<ParticipantInfo> {
        let Some(r) = self.rooms.get(&room) else {
            return Vec::new();
        };
        r.members
            .iter()
            .filter_map(|leg| self.legs.get(leg).map(|p| info(*leg, p)))
            .collect()
    }

    /// Everyone in every room.
    pub fn all_participants(&self) -> Vec<ParticipantInfo> {
        let mut v: Vec<_> = self.legs.iter().map(|(l, p)| info(*l, p)).collect();
        v.sort_by_key(|p| p.leg);
        v
    }

    /// The number of the leg's latest Play (see [`Rooms::handle_playback_done_of`]).
    pub fn playback_seq(&self, leg: LegId) -> Option<u32> {
        self.legs.get(&leg).map(|p| p.playback_seq)
    }

    /// Like [`Rooms::handle_playback_done`], but only for the latest Play: the end of a
    /// prompt that was already replaced is ignored.
    pub fn handle_playback_done_of(&mut self, now: Instant, leg: LegId, seq: u32) {
        if self.playback_seq(leg) == Some(seq) {
            self.handle_playback_done(now, leg);
        }
    }

    /// An administrator is in the mix or on their way into it.
    fn admin_present(&self, room_id: i64) -> bool {
        self.rooms.get(&room_id).is_some_and(|r| {
            r.members.iter().any(|l| {
                self.legs.get(l).is_some_and(|p| {
                    p.is_admin
                        && matches!(
                            p.stage,
                            Stage::InRoom | Stage::Announcing(AfterAnnouncement::Mix)
                        )
                })
            })
        })
    }

    /// The room wants an administrator and none is present or joining.
    fn must_wait(&self, leg: LegId) -> bool {
        let Some(p) = self.legs.get(&leg) else {
            return false;
        };
        let wait = self
            .rooms
            .get(&p.room)
            .and_then(|r| r.config.as_ref())
            .is_some_and(|c| c.wait_for_admin && c.admin_extension.is_some());
        wait && !p.is_admin && !self.admin_present(p.room)
    }

    /// The room `leg` is in.
    pub fn room_of(&self, leg: LegId) -> Option<i64> {
        self.legs.get(&leg).map(|p| p.room)
    }

    /// Whether `leg` is in a room.
    pub fn contains(&self, leg: LegId) -> bool {
        self.legs.contains_key(&leg)
    }

    /// A caller reached `conference` (the room's production configuration); `guesser`
    /// names whom their wrong codes count against, across calls.
    pub fn handle_join(
        &mut self,
        now: Instant,
        leg: LegId,
        conference: &Conference,
        caller: &str,
        guesser: &str,
        is_admin: bool,
    ) {
        self.join(now, leg, conference, caller, Some(guesser), is_admin);
    }

    /// Someone the room invited answered: no access code (they were asked in), but
    /// waiting for the administrator applies as to anyone.
    pub fn handle_invited(
        &mut self,
        now: Instant,
        leg: LegId,
        conference: &Conference,
        callee: &str,
        is_admin: bool,
    ) {
        self.join(now, leg, conference, callee, None, is_admin);
    }

    /// `guesser` is `None` for someone invited in: no code is asked.
    fn join(
        &mut self,
        now: Instant,
        leg: LegId,
        conference: &Conference,
        caller: &str,
        guesser: Option<&str>,
        is_admin: bool,
    ) {
        let room = self.rooms.entry(conference.id).or_default();
        room.config = Some(conference.clone());
        room.members.insert(leg);
        self.legs.insert(
            leg,
            Participant {
                room: conference.id,
                caller: caller.to_owned(),
                guesser: guesser.map(str::to_owned),
                is_admin,
                stage: Stage::InRoom,
                muted: false,
                playback_deadline: None,
                playback_seq: 0,
            },
        );
        if self.locked_out(leg) {
            return self.refuse_locked(now, leg);
        }
        let has_code = conference
            .access_code
            .as_deref()
            .is_some_and(|c| !c.is_empty());
        if let (Some(guesser), true) = (guesser, has_code) {
            let verdict = self
                .guard(now)
                .check(now, &guesser.to_owned(), &conference.id);
            if matches!(verdict, Verdict::Refused(_)) {
                return self.too_many_attempts(now, leg);
            }
            self.ask_for_code(now, leg, 0, vec![Prompt::EnterAccessCode]);
        } else {
            self.admit(now, leg);
        }
    }

    fn set_stage(&mut self, leg: LegId, stage: Stage) {
        if let Some(p) = self.legs.get_mut(&leg) {
            p.stage = stage;
        }
    }

    fn play(&mut self, now: Instant, leg: LegId, prompts: Vec<Prompt>, then_music: bool) {
        if let Some(p) = self.legs.get_mut(&leg) {
            p.playback_seq = p.playback_seq.wrapping_add(1);
            p.playback_deadline = Some(now + PLAYBACK_GUARD);
            self.timers.insert((now + PLAYBACK_GUARD, leg), ());
        }
        self.commands.push_back(RoomCommand::Play {
            leg,
            prompts,
            then_music,
        });
    }

    fn ask_for_code(&mut self, now: Instant, leg: LegId, failures: u8, prompts: Vec<Prompt>) {
        self.set_stage(
            leg,
            Stage::EnteringCode(CodeEntry {
                digits: String::new(),
                failures,
                prompt_playing: true,
                deadline: None,
                held: false,
            }),
        );
        self.play(now, leg, prompts, false);
    }

    /// The room is locked and `leg` is neither its administrator nor invited.
    fn locked_out(&self, leg: LegId) -> bool {
        self.legs.get(&leg).is_some_and(|p| {
            !p.is_admin && p.guesser.is_some() && self.rooms.get(&p.room).is_some_and(|r| r.locked)
        })
    }

    fn refuse_locked(&mut self, now: Instant, leg: LegId) {
        self.set_stage(leg, Stage::Announcing(AfterAnnouncement::Hangup));
        self.play(now, leg, vec![Prompt::ConferenceLocked], false);
    }

    /// Locks or unlocks room `room_id` for new callers. Those in the mix or waiting for
    /// the administrator stay; a caller still entering the code is turned away once the
    /// code is right.
    pub fn set_locked(&mut self, room_id: i64, locked: bool) -> Result<(), LockError> {
        let room = self.rooms.get_mut(&room_id).ok_or(LockError::Empty)?;
        room.locked = locked;
        Ok(())
    }

    /// The rooms locked now.
    pub fn locked_rooms(&self) -> Vec<i64> {
        let mut v: Vec<i64> = self
            .rooms
            .iter()
            .filter(|(_, r)| r.locked)
            .map(|(id, _)| *id)
            .collect();
        v.sort_unstable();
        v
    }

    /// Past the receptionist: into the mix, or waiting for the administrator.
    fn admit(&mut self, now: Instant, leg: LegId) {
        if self.locked_out(leg) {
            return self.refuse_locked(now, leg);
        }
        let Some(p) = self.legs.get(&leg) else { return };
        let Some(room) = self.rooms.get(&p.room) else {
            return;
        };
        let (is_admin, room_id, room_empty) = (p.is_admin, p.room, room.in_mix.is_empty());
        if self.must_wait(leg) {
            self.set_stage(leg, Stage::Waiting);
            self.play(now, leg, vec![Prompt::WaitForAdministrator], true);
            return;
        }
        if room_empty {
            self.set_stage(leg, Stage::Announcing(AfterAnnouncement::Mix));
            self.play(now, leg, vec![Prompt::FirstParticipant], false);
            if is_admin {
                self.release_waiting(now, room_id);
            }
            return;
        }
        self.join_mix(leg);
        if is_admin {
            self.release_waiting(now, room_id);
        }
    }

    fn join_mix(&mut self, leg: LegId) {
        let Some(p) = self.legs.get_mut(&leg) else {
            return;
        };
        p.stage = Stage::InRoom;
        p.playback_deadline = None;
        let room_id = p.room;
        let muted = p.muted;
        let Some(room) = self.rooms.get_mut(&room_id) else {
            return;
        };
        if !room.in_mix.is_empty() {
            self.commands.push_back(RoomCommand::RoomTone {
                room: room_id,
                tone: Prompt::JoinTone,
            });
        }
        room.in_mix.insert(leg);
        self.commands
            .push_back(RoomCommand::Mix { leg, room: room_id });
        if muted {
            self.commands
                .push_back(RoomCommand::Mute { leg, muted: true });
        }
    }

    /// The administrator arrived: everyone waiting hears that the conference starts, then
    /// joins the mix.
    fn release_waiting(&mut self, now: Instant, room_id: i64) {
        let waiting: Vec<LegId> = self
            .rooms
            .get(&room_id)
            .map(|r| {
                r.members
                    .iter()
                    .copied()
                    .filter(|l| self.legs.get(l).is_some_and(|p| p.stage == Stage::Waiting))
                    .collect()
            })
            .unwrap_or_default();
        for leg in waiting {
            self.set_stage(leg, Stage::Announcing(AfterAnnouncement::Mix));
            self.play(now, leg, vec![Prompt::ConferenceStarting], false);
        }
    }

    /// A DTMF digit from the leg (RFC 4733, SIP INFO or in-band: the caller does not care).
    pub fn handle_digit(&mut self, now: Instant, leg: LegId, digit: char) {
        let Some(p) = self.legs.get_mut(&leg) else {
            return;
        };
        let Stage::EnteringCode(entry) = &mut p.stage else {
            return;
        };
        if entry.held {
            return;
        }
        match digit {
            '#' => self.check_code(now, leg),
            '*' => {
                entry.digits.clear();
                entry.deadline = Some(now + INTER_DIGIT_TIMEOUT);
                self.timers.insert((now + INTER_DIGIT_TIMEOUT, leg), ());
            }
            d if d.is_ascii_digit() => {
                entry.digits.push(d);
                if entry.digits.len() > MAX_CODE_DIGITS {
                    return self.check_code(now, leg);
                }
                entry.deadline = Some(now + INTER_DIGIT_TIMEOUT);
                self.timers.insert((now + INTER_DIGIT_TIMEOUT, leg), ());
            }
            _ => {}
        }
    }

    fn guard(&mut self, now: Instant) -> &mut Guard<String, i64> {
        self.guard
            .get_or_insert_with(|| Guard::new(ACCESS_CODE_POLICY, now))
    }

    /// Checks what was typed, unless the caller or the room has had too many wrong codes
    /// lately: then the check waits (digits ignored meanwhile), or the caller is told to
    /// try again later when the wait would be too long.
    fn check_code(&mut self, now: Instant, leg: LegId) {
        let Some(p) = self.legs.get(&leg) else { return };
        let Stage::EnteringCode(entry) = &p.stage else {
            return;
        };
        let expected = self
            .rooms
            .get(&p.room)
            .and_then(|r| r.config.as_ref())
            .and_then(|c| c.access_code.clone())
            .unwrap_or_default();
        // A code removed by Apply while someone was typing it lets them in.
        if expected.is_empty() {
            return self.admit(now, leg);
        }
        let (digits, failures) = (entry.digits.clone(), entry.failures);
        let (guesser, room) = (p.guesser.clone().unwrap_or_default(), p.room);
        if digits.is_empty() {
            // Silence is no guess: it costs one of this call's tries only.
            return self.wrong_code(now, leg, failures + 1);
        }
        match self.guard(now).check(now, &guesser, &room) {
            Verdict::Go => {}
            Verdict::Wait(wait) if wait <= MAX_CODE_WAIT => return self.hold_check(now, leg, wait),
            Verdict::Wait(_) | Verdict::Refused(_) => return self.too_many_attempts(now, leg),
        }
        if constant_time_eq(&digits, &expected) {
            self.guard(now).succeeded(now, &guesser, &room);
            return self.admit(now, leg);
        }
        self.stats.wrong += 1;
        let guard = self.guard(now);
        guard.failed(now, &guesser, &room);
        let recent = guard.target_failures(now, &room);
        if recent >= ROOM_ALERT_FAILURES
            && self
                .alerted
                .get(&room)
                .is_none_or(|at| now.saturating_duration_since(*at) >= ALERT_EVERY)
        {
            self.alerted.insert(room, now);
            self.commands.push_back(RoomCommand::CodeGuessing {
                room,
                failures: recent,
            });
        }
        self.wrong_code(now, leg, failures + 1);
    }

    /// This call's `failures`-th wrong code: ask again, or goodbye after the last try.
    fn wrong_code(&mut self, now: Instant, leg: LegId, failures: u8) {
        if failures >= MAX_CODE_ATTEMPTS {
            self.set_stage(leg, Stage::Announcing(AfterAnnouncement::Hangup));
            self.play(
                now,
                leg,
                vec![Prompt::WrongAccessCode, Prompt::Goodbye],
                false,
            );
        } else {
            self.ask_for_code(
                now,
                leg,
                failures,
                vec![Prompt::WrongAccessCode, Prompt::EnterAccessCode],
            );
        }
    }

    fn hold_check(&mut self, now: Instant, leg: LegId, wait: Duration) {
        let Some(Participant {
            stage: Stage::EnteringCode(entry),
            ..
        }) = self.legs.get_mut(&leg)
        else {
            return;
        };
        entry.held = true;
        entry.deadline = Some(now + wait);
        self.timers.insert((now + wait, leg), ());
    }

    fn too_many_attempts(&mut self, now: Instant, leg: LegId) {
        self.stats.refused += 1;
        self.set_stage(leg, Stage::Announcing(AfterAnnouncement::Hangup));
        self.play(now, leg, vec![Prompt::TooManyAttempts], false);
    }

    /// The media bridge finished playing to `leg`.
    pub fn handle_playback_done(&mut self, now: Instant, leg: LegId) {
        let Some(p) = self.legs.get_mut(&leg) else {
            return;
        };
        p.playback_deadline = None;
        match &mut p.stage {
            Stage::EnteringCode(entry) => {
                if entry.prompt_playing {
                    entry.prompt_playing = false;
                    if entry.deadline.is_none() {
                        entry.deadline = Some(now + NO_INPUT_TIMEOUT);
                        self.timers.insert((now + NO_INPUT_TIMEOUT, leg), ());
                    }
                }
            }
            Stage::Announcing(AfterAnnouncement::Mix) => {
                // The administrator may have left while this one heard the announcement.
                if self.must_wait(leg) {
                    self.apply_admin_absent_policy(now, leg);
                } else {
                    self.join_mix(leg);
                }
            }
            Stage::Announcing(AfterAnnouncement::Hangup) => {
                self.commands.push_back(RoomCommand::Hangup { leg });
            }
            Stage::Waiting | Stage::InRoom => {}
        }
    }

    /// The leg's call ended (BYE, kick, error). Returns nothing; the room reacts.
    pub fn handle_leave(&mut self, now: Instant, leg: LegId) {
        let Some(p) = self.legs.remove(&leg) else {
            return;
        };
        let Some(room) = self.rooms.get_mut(&p.room) else {
            return;
        };
        room.members.remove(&leg);
        let was_in_mix = room.in_mix.remove(&leg);
        let room_id = p.room;
        if was_in_mix && !room.in_mix.is_empty() {
            self.commands.push_back(RoomCommand::RoomTone {
                room: room_id,
                tone: Prompt::LeaveTone,
            });
        }
        if p.is_admin {
            self.on_admin_left(now, room_id);
        }
        if self
            .rooms
            .get(&room_id)
            .is_some_and(|r| r.members.is_empty())
        {
            self.rooms.remove(&room_id);
        }
    }

    /// The last administrator left: keep going, wait, or end (per room).
    fn on_admin_left(&mut self, now: Instant, room_id: i64) {
        let Some(room) = self.rooms.get(&room_id) else {
            return;
        };
        let Some(config) = room.config.as_ref() else {
            return;
        };
        if !config.wait_for_admin || self.admin_present(room_id) {
            return;
        }
        let policy = config.when_admin_leaves;
        let in_mix: Vec<LegId> = room.in_mix.iter().copied().collect();
        match policy {
            AdminLeaves::KeepGoing => {}
            AdminLeaves::Wait => {
                for leg in in_mix {
                    self.unmix(leg);
                    self.set_stage(leg, Stage::Waiting);
                    self.play(now, leg, vec![Prompt::AdministratorLeft], true);
                }
            }
            AdminLeaves::End => {
                for leg in in_mix {
                    self.unmix(leg);
                    self.set_stage(leg, Stage::Announcing(AfterAnnouncement::Hangup));
                    self.play(now, leg, vec![Prompt::ConferenceEnded], false);
                }
            }
        }
    }

    fn unmix(&mut self, leg: LegId) {
        let Some(p) = self.legs.get(&leg) else { return };
        if let Some(room) = self.rooms.get_mut(&p.room) {
            if room.in_mix.remove(&leg) {
                self.commands.push_back(RoomCommand::Unmix { leg });
            }
        }
    }

    fn members_in(&self, room_id: i64, stage: impl Fn(&Stage) -> bool) -> Vec<LegId> {
        self.rooms
            .get(&room_id)
            .map(|r| {
                r.members
                    .iter()
                    .copied()
                    .filter(|l| self.legs.get(l).is_some_and(|p| stage(&p.stage)))
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Someone was on their way into the mix when the last administrator left.
    fn apply_admin_absent_policy(&mut self, now: Instant, leg: LegId) {
        let policy = self
            .legs
            .get(&leg)
            .and_then(|p| self.rooms.get(&p.room))
            .and_then(|r| r.config.as_ref())
            .map(|c| c.when_admin_leaves)
            .unwrap_or_default();
        match policy {
            AdminLeaves::KeepGoing => self.join_mix(leg),
            AdminLeaves::Wait => {
                self.set_stage(leg, Stage::Waiting);
                self.play(now, leg, vec![Prompt::WaitForAdministrator], true);
            }
            AdminLeaves::End => {
                self.set_stage(leg, Stage::Announcing(AfterAnnouncement::Hangup));
                self.play(now, leg, vec![Prompt::ConferenceEnded], false);
            }
        }
    }

    /// Kick from the console or API: the call ends.
    pub fn kick(&mut self, leg: LegId) -> bool {
        if !self.legs.contains_key(&leg) {
            return false;
        }
        self.commands.push_back(RoomCommand::Hangup { leg });
        true
    }

    /// Mutes or unmutes `leg`; false when it is in no room.
    pub fn set_muted(&mut self, leg: LegId, muted: bool) -> bool {
        let Some(p) = self.legs.get_mut(&leg) else {
            return false;
        };
        p.muted = muted;
        if p.stage == Stage::InRoom {
            self.commands.push_back(RoomCommand::Mute { leg, muted });
        }
        true
    }

    /// A new production revision: rooms that disappeared close (their participants hear so
    /// and are hung up); others take the new settings for what happens next.
    pub fn handle_config(&mut self, now: Instant, conferences: &[Conference]) {
        let ids: Vec<i64> = self.rooms.keys().copied().collect();
        for id in ids {
            match conferences.iter().find(|c| c.id == id) {
                Some(c) => {
                    if let Some(room) = self.rooms.get_mut(&id) {
                        room.config = Some(c.clone());
                    }
                    // The code was removed: those typing it are let in.
                    if c.access_code.as_deref().is_none_or(str::is_empty) {
                        for leg in self.members_in(id, |s| matches!(s, Stage::EnteringCode(_))) {
                            self.admit(now, leg);
                        }
                    }
                    // No more waiting for the administrator: the waiting start.
                    if !c.wait_for_admin {
                        self.release_waiting(now, id);
                    }
                }
                None => {
                    let members: Vec<LegId> = self
                        .rooms
                        .get(&id)
                        .map(|r| r.members.iter().copied().collect())
                        .unwrap_or_default();
                    for leg in members {
                        self.unmix(leg);
                        self.set_stage(leg, Stage::Announcing(AfterAnnouncement::Hangup));
                        self.play(now, leg, vec![Prompt::ConferenceClosed], false);
                    }
                }
            }
        }
    }

    /// Time passes: code-entry deadlines, held checks, alerts.
    pub fn handle_timeout(&mut self, now: Instant) {
        while let Some((&(at, leg), _)) = self.timers.iter().next() {
            if at > now {
                break;
            }
            self.timers.remove(&(at, leg));
            self.on_timer(now, leg);
        }
    }

    fn on_timer(&mut self, now: Instant, leg: LegId) {
        let Some(p) = self.legs.get_mut(&leg) else {
            return;
        };
        if p.playback_deadline.is_some_and(|d| d <= now) {
            // The media bridge never said the prompt ended: carry on as if it had.
            return self.handle_playback_done(now, leg);
        }
        let Stage::EnteringCode(entry) = &mut p.stage else {
            return;
        };
        // A held check is due even if the prompt it interrupted never reported its end.
        if (entry.prompt_playing && !entry.held) || entry.deadline.is_none_or(|d| d > now) {
            return;
        }
        entry.deadline = None;
        entry.held = false;
        // Typed something then stopped, or a held check is due: check it as if `#` came.
        // Typed nothing: one attempt used, the prompt again.
        self.check_code(now, leg);
    }
}

fn info(leg: LegId, p: &Participant) -> ParticipantInfo {
    ParticipantInfo {
        leg,
        room: p.room,
        caller: p.caller.clone(),
        is_admin: p.is_admin,
        state: match p.stage {
            Stage::EnteringCode(_) => "entering_code",
            Stage::Announcing(AfterAnnouncement::Mix) => "joining",
            Stage::Announcing(AfterAnnouncement::Hangup) => "leaving",
            Stage::Waiting => "waiting",
            Stage::InRoom => "in_room",
        },
        muted: p.muted,
    }
}

/// Compares without an early exit, so timing does not tell how many digits were right.
fn constant_time_eq(a: &str, b: &str) -> bool {
    let (a, b) = (a.as_bytes(), b.as_bytes());
    let mut diff = a.len() ^ b.len();
    for i in 0..a.len().max(b.len()) {
        diff |= usize::from(a.get(i).copied().unwrap_or(0) ^ b.get(i).copied().unwrap_or(0));
    }
    diff == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    fn room(code: Option<&str>, wait: bool) -> Conference {
        Conference {
            id: 7,
            name: "Sales".into(),
            extension: "800".into(),
            access_code: code.map(Into::into),
            admin_extension: Some("101".into()),
            wait_for_admin: wait,
            when_admin_leaves: AdminLeaves::Wait,
        }
    }

    fn drain(r: &mut Rooms) -> Vec<RoomCommand> {
        std::iter::from_fn(|| r.poll_command()).collect()
    }

    fn keys(r: &mut Rooms, now: Instant, leg: LegId, digits: &str) {
        for d in digits.chars() {
            r.handle_digit(now, leg, d);
        }
    }

    fn state(r: &Rooms, leg: LegId) -> &'static str {
        r.all_participants()
            .into_iter()
            .find(|p| p.leg == leg)
            .map_or("gone", |p| p.state)
    }

    #[test]
    fn no_code_first_participant_then_second_joins_with_a_tone() {
        let now = Instant::now();
        let mut r = Rooms::new();
        let conf = room(None, false);
        r.handle_join(now, LegId(1), &conf, "101", "user:101", false);
        assert_eq!(
            drain(&mut r),
            vec![RoomCommand::Play {
                leg: LegId(1),
                prompts: vec![Prompt::FirstParticipant],
                then_music: false
            }]
        );
        r.handle_playback_done(now, LegId(1));
        assert_eq!(
            drain(&mut r),
            vec![RoomCommand::Mix {
                leg: LegId(1),
                room: 7
            }]
        );
        r.handle_join(now, LegId(2), &conf, "102", "user:102", false);
        assert_eq!(
            drain(&mut r),
            vec![
                RoomCommand::RoomTone {
                    room: 7,
                    tone: Prompt::JoinTone
                },
                RoomCommand::Mix {
                    leg: LegId(2),
                    room: 7
                }
            ]
        );
        r.handle_leave(now, LegId(2));
        assert_eq!(
            drain(&mut r),
            vec![RoomCommand::RoomTone {
                room: 7,
                tone: Prompt::LeaveTone
            }]
        );
    }

    #[test]
    fn right_code_after_a_wrong_one_and_barge_in() {
        let now = Instant::now();
        let mut r = Rooms::new();
        r.handle_join(
            now,
            LegId(1),
            &room(Some("4321"), false),
            "101",
            "user:101",
            false,
        );
        drain(&mut r);
        assert_eq!(state(&r, LegId(1)), "entering_code");
        // Digits during the prompt count (barge-in).
        keys(&mut r, now, LegId(1), "1111#");
        assert_eq!(
            drain(&mut r),
            vec![RoomCommand::Play {
                leg: LegId(1),
                prompts: vec![Prompt::WrongAccessCode, Prompt::EnterAccessCode],
                then_music: false
            }]
        );
        keys(&mut r, now, LegId(1), "4321#");
        assert_eq!(state(&r, LegId(1)), "joining");
        r.handle_playback_done(now, LegId(1));
        assert_eq!(state(&r, LegId(1)), "in_room");
    }

    /// One call of `guesser` keying `codes` (each followed by `#`) at `now`; returns what
    /// the room did, after the prompts it played were heard out.
    fn call(
        r: &mut Rooms,
        now: Instant,
        leg: LegId,
        guesser: &str,
        codes: &[&str],
    ) -> Vec<RoomCommand> {
        r.handle_join(now, leg, &room(Some("4321"), false), "x", guesser, false);
        let mut seen = drain(r);
        for code in codes {
            keys(r, now, leg, &format!("{code}#"));
            seen.extend(drain(r));
        }
        seen
    }

    fn played(cmds: &[RoomCommand], prompt: Prompt) -> bool {
        cmds.iter()
            .any(|c| matches!(c, RoomCommand::Play { prompts, .. } if prompts.contains(&prompt)))
    }

    #[test]
    fn wrong_codes_count_across_calls_and_hold_back_only_the_guesser() {
        let t0 = Instant::now();
        let mut r = Rooms::new();
        // First call: three wrong codes are free (checked at once), then goodbye.
        let first = call(&mut r, t0, LegId(1), "user:666", &["1111", "1112", "1113"]);
        assert!(played(&first, Prompt::Goodbye), "{first:?}");
        r.handle_leave(t0, LegId(1));
        // Second call at once: the code is typed, but its check waits 5 s (digits in
        // the meantime are ignored), then it is checked.
        let second = call(&mut r, t0, LegId(2), "user:666", &["1114"]);
        assert!(!played(&second, Prompt::WrongAccessCode), "{second:?}");
        keys(&mut r, t0, LegId(2), "4321#");
        assert!(drain(&mut r).is_empty());
        r.handle_timeout(t0 + Duration::from_secs(5));
        assert!(played(&drain(&mut r), Prompt::WrongAccessCode));
        r.handle_leave(t0, LegId(2));
        // Meanwhile a colleague keys the right code and is in at once.
        let colleague = call(&mut r, t0, LegId(3), "user:102", &["4321"]);
        assert!(
            played(&colleague, Prompt::FirstParticipant),
            "{colleague:?}"
        );
        // The guesser keeps going for an hour, a call after another: at most 30 codes
        // are checked, then they are told to try again later.
        let (mut checked, mut refused, mut now) = (0, 0, t0 + Duration::from_secs(5));
        for leg in (10..2000).map(LegId) {
            if now > t0 + Duration::from_secs(3600) {
                break;
            }
            let cmds = call(&mut r, now, leg, "user:666", &["2222"]);
            if played(&cmds, Prompt::TooManyAttempts) {
                refused += 1;
            } else if played(&cmds, Prompt::WrongAccessCode) {
                checked += 1;
            } else {
                // Held: wait for the check.
                r.handle_timeout(now + MAX_CODE_WAIT);
                let later = drain(&mut r);
                if played(&later, Prompt::WrongAccessCode) {
                    checked += 1;
                } else {
                    assert!(played(&later, Prompt::TooManyAttempts), "{later:?}");
                    refused += 1;
                }
            }
            r.handle_leave(now, leg);
            now += Duration::from_secs(10);
        }
        assert!(
            checked + 4 <= 30,
            "{checked} more codes checked in the hour"
        );
        assert!(refused > 100, "{refused}");
        assert_eq!(r.code_stats().wrong as usize, 4 + checked);
        // The colleague still gets in.
        let colleague = call(&mut r, now, LegId(5000), "user:102", &["4321"]);
        assert!(
            !played(&colleague, Prompt::TooManyAttempts),
            "{colleague:?}"
        );
        assert_eq!(state(&r, LegId(5000)), "in_room");
    }

    #[test]
    fn many_guessers_on_one_room_alert_its_administrator() {
        let t0 = Instant::now();
        let mut r = Rooms::new();
        let mut alerts = Vec::new();
        for n in 0..200u64 {
            let (leg, now) = (LegId(n), t0 + Duration::from_secs(n * 5));
            let cmds = call(
                &mut r,
                now,
                leg,
                &format!("number:+3247000{leg:04}"),
                &["0000"],
            );
            alerts.extend(
                cmds.into_iter()
                    .filter(|c| matches!(c, RoomCommand::CodeGuessing { .. })),
            );
            r.handle_timeout(now + MAX_CODE_WAIT);
            alerts.extend(
                drain(&mut r)
                    .into_iter()
                    .filter(|c| matches!(c, RoomCommand::CodeGuessing { .. })),
            );
            r.handle_leave(now, leg);
        }
        // Alerted once on reaching the threshold, then at most every 10 minutes.
        assert!(!alerts.is_empty());
        assert_eq!(
            alerts[0],
            RoomCommand::CodeGuessing {
                room: 7,
                failures: ROOM_ALERT_FAILURES
            }
        );
        assert!(alerts.len() <= 3, "{alerts:?}");
        assert!(r.code_stats().wrong <= 300);
    }

    #[test]
    fn three_wrong_codes_say_goodbye_and_hang_up() {
        let now = Instant::now();
        let mut r = Rooms::new();
        r.handle_join(
            now,
            LegId(1),
            &room(Some("4321"), false),
            "101",
            "user:101",
            false,
        );
        keys(&mut r, now, LegId(1), "1#2#");
        drain(&mut r);
        keys(&mut r, now, LegId(1), "3#");
        assert_eq!(
            drain(&mut r),
            vec![RoomCommand::Play {
                leg: LegId(1),
                prompts: vec![Prompt::WrongAccessCode, Prompt::Goodbye],
                then_music: false
            }]
        );
        // More digits while saying goodbye change nothing.
        keys(&mut r, now, LegId(1), "4321#");
        assert!(drain(&mut r).is_empty());
        r.handle_playback_done(now, LegId(1));
        assert_eq!(drain(&mut r), vec![RoomCommand::Hangup { leg: LegId(1) }]);
    }

    #[test]
    fn two_hundred_digits_without_pound_are_a_wrong_attempt_not_a_buffer() {
        let now = Instant::now();
        let mut r = Rooms::new();
        r.handle_join(
            now,
            LegId(1),
            &room(Some("4321"), false),
            "101",
            "user:101",
            false,
        );
        keys(&mut r, now, LegId(1), &"5".repeat(200));
        let cmds = drain(&mut r);
        assert!(cmds.contains(&RoomCommand::Play {
            leg: LegId(1),
            prompts: vec![Prompt::WrongAccessCode, Prompt::Goodbye],
            then_music: false
        }));
    }

    #[test]
    fn inter_digit_timeout_checks_and_silence_costs_an_attempt() {
        let t0 = Instant::now();
        let mut r = Rooms::new();
        r.handle_join(
            t0,
            LegId(1),
            &room(Some("42"), false),
            "101",
            "user:101",
            false,
        );
        r.handle_playback_done(t0, LegId(1));
        drain(&mut r);
        keys(&mut r, t0, LegId(1), "42");
        let t1 = t0 + INTER_DIGIT_TIMEOUT;
        assert_eq!(r.poll_timeout(), Some(t1));
        r.handle_timeout(t1);
        assert_eq!(
            state(&r, LegId(1)),
            "joining",
            "typed code checked on timeout"
        );

        let mut r = Rooms::new();
        r.handle_join(
            t0,
            LegId(2),
            &room(Some("42"), false),
            "101",
            "user:101",
            false,
        );
        r.handle_playback_done(t0, LegId(2));
        drain(&mut r);
        r.handle_timeout(t0 + NO_INPUT_TIMEOUT);
        assert_eq!(
            drain(&mut r),
            vec![RoomCommand::Play {
                leg: LegId(2),
                prompts: vec![Prompt::WrongAccessCode, Prompt::EnterAccessCode],
                then_music: false
            }]
        );
    }

    #[test]
    fn waiting_for_the_administrator_then_released_then_waiting_again() {
        let now = Instant::now();
        let mut r = Rooms::new();
        let conf = room(None, true);
        r.handle_join(now, LegId(1), &conf, "102", "user:102", false);
        assert_eq!(
            drain(&mut r),
            vec![RoomCommand::Play {
                leg: LegId(1),
                prompts: vec![Prompt::WaitForAdministrator],
                then_music: true
            }]
        );
        assert_eq!(state(&r, LegId(1)), "waiting");
        r.handle_playback_done(now, LegId(1)); // end of the announcement: music goes on, still waiting
        assert_eq!(state(&r, LegId(1)), "waiting");
        // The administrator arrives: first in the mix, the waiting one is told and joins.
        r.handle_join(now, LegId(2), &conf, "101", "user:101", true);
        let cmds = drain(&mut r);
        assert!(cmds.contains(&RoomCommand::Play {
            leg: LegId(1),
            prompts: vec![Prompt::ConferenceStarting],
            then_music: false
        }));
        r.handle_playback_done(now, LegId(2));
        r.handle_playback_done(now, LegId(1));
        assert_eq!(state(&r, LegId(1)), "in_room");
        assert_eq!(state(&r, LegId(2)), "in_room");
        drain(&mut r);
        // The administrator leaves: back to waiting with an announcement and music.
        r.handle_leave(now, LegId(2));
        let cmds = drain(&mut r);
        assert!(cmds.contains(&RoomCommand::Unmix { leg: LegId(1) }));
        assert!(cmds.contains(&RoomCommand::Play {
            leg: LegId(1),
            prompts: vec![Prompt::AdministratorLeft],
            then_music: true
        }));
        assert_eq!(state(&r, LegId(1)), "waiting");
    }

    #[test]
    fn admin_leaving_with_end_policy_ends_the_conference() {
        let now = Instant::now();
        let mut r = Rooms::new();
        let mut conf = room(None, true);
        conf.when_admin_leaves = AdminLeaves::End;
        r.handle_join(now, LegId(1), &conf, "101", "user:101", true);
        r.handle_playback_done(now, LegId(1));
        r.handle_join(now, LegId(2), &conf, "102", "user:102", false);
        drain(&mut r);
        r.handle_leave(now, LegId(1));
        let cmds = drain(&mut r);
        assert!(cmds.contains(&RoomCommand::Play {
            leg: LegId(2),
            prompts: vec![Prompt::ConferenceEnded],
            then_music: false
        }));
        r.handle_playback_done(now, LegId(2));
        assert_eq!(drain(&mut r), vec![RoomCommand::Hangup { leg: LegId(2) }]);
    }

    #[test]
    fn deleted_room_closes_with_an_announcement_changed_code_affects_newcomers() {
        let now = Instant::now();
        let mut r = Rooms::new();
        let conf = room(Some("1"), false);
        r.handle_join(now, LegId(1), &conf, "101", "user:101", false);
        keys(&mut r, now, LegId(1), "1#");
        r.handle_playback_done(now, LegId(1));
        assert_eq!(state(&r, LegId(1)), "in_room");
        // New code: the one inside stays; a newcomer needs the new code.
        let mut changed = conf.clone();
        changed.access_code = Some("2".into());
        r.handle_config(now, &[changed.clone()]);
        assert_eq!(state(&r, LegId(1)), "in_room");
        r.handle_join(now, LegId(2), &changed, "102", "user:102", false);
        keys(&mut r, now, LegId(2), "1#");
        assert_eq!(state(&r, LegId(2)), "entering_code");
        keys(&mut r, now, LegId(2), "2#");
        assert_eq!(state(&r, LegId(2)), "in_room");
        drain(&mut r);
        // Deleted: both hear it closed and are hung up.
        r.handle_config(now, &[]);
        let cmds = drain(&mut r);
        assert!(cmds.contains(&RoomCommand::Play {
            leg: LegId(1),
            prompts: vec![Prompt::ConferenceClosed],
            then_music: false
        }));
        r.handle_playback_done(now, LegId(1));
        r.handle_playback_done(now, LegId(2));
        let cmds = drain(&mut r);
        assert!(cmds.contains(&RoomCommand::Hangup { leg: LegId(1) }));
        assert!(cmds.contains(&RoomCommand::Hangup { leg: LegId(2) }));
    }

    #[test]
    fn lost_playback_event_is_covered_by_a_guard_timer() {
        let now = Instant::now();
        let mut r = Rooms::new();
        r.handle_join(now, LegId(1), &room(None, false), "101", "user:101", false);
        drain(&mut r);
        r.handle_timeout(now + PLAYBACK_GUARD);
        assert_eq!(
            drain(&mut r),
            vec![RoomCommand::Mix {
                leg: LegId(1),
                room: 7
            }]
        );
    }

    #[test]
    fn invited_callee_skips_the_code_but_waits_for_the_administrator() {
        let now = Instant::now();
        let mut r = Rooms::new();
        let mut conf = room(Some("4321"), true);
        conf.when_admin_leaves = AdminLeaves::Wait;
        r.handle_invited(now, LegId(1), &conf, "103", false);
        assert_eq!(state(&r, LegId(1)), "waiting");
        let mut open = room(Some("4321"), false);
        open.id = 8;
        r.handle_invited(now, LegId(2), &open, "103", false);
        assert_eq!(
            state(&r, LegId(2)),
            "joining",
            "no access code for the invited"
        );
    }

    #[test]
    fn caller_arriving_during_the_administrators_first_prompt_is_not_left_waiting() {
        let now = Instant::now();
        let mut r = Rooms::new();
        let conf = room(None, true);
        r.handle_join(now, LegId(1), &conf, "101", "user:101", true); // the administrator, hearing "first participant"
        r.handle_join(now, LegId(2), &conf, "102", "user:102", false);
        assert_ne!(state(&r, LegId(2)), "waiting");
        r.handle_playback_done(now, LegId(1));
        r.handle_playback_done(now, LegId(2));
        assert_eq!(
            (state(&r, LegId(1)), state(&r, LegId(2))),
            ("in_room", "in_room")
        );
    }

    #[test]
    fn administrator_leaving_during_the_announcements_sends_the_others_back_to_wait() {
        let now = Instant::now();
        let mut r = Rooms::new();
        let conf = room(None, true);
        r.handle_join(now, LegId(2), &conf, "102", "user:102", false);
        assert_eq!(state(&r, LegId(2)), "waiting");
        r.handle_join(now, LegId(1), &conf, "101", "user:101", true); // releases 2: "conference starting"
        assert_eq!(state(&r, LegId(2)), "joining");
        r.handle_leave(now, LegId(1)); // gone before anyone reached the mix
        r.handle_playback_done(now, LegId(2));
        assert_eq!(
            state(&r, LegId(2)),
            "waiting",
            "no administrator: back to waiting"
        );
    }

    #[test]
    fn removed_code_lets_the_typists_in_and_disabled_waiting_releases_the_waiting() {
        let now = Instant::now();
        let mut r = Rooms::new();
        let conf = room(Some("4321"), false);
        r.handle_join(now, LegId(1), &conf, "102", "user:102", false);
        assert_eq!(state(&r, LegId(1)), "entering_code");
        let mut open = conf.clone();
        open.access_code = None;
        r.handle_config(now, &[open]);
        assert_eq!(state(&r, LegId(1)), "joining");

        let mut r = Rooms::new();
        let waiting = room(None, true);
        r.handle_join(now, LegId(2), &waiting, "102", "user:102", false);
        assert_eq!(state(&r, LegId(2)), "waiting");
        let mut relaxed = waiting.clone();
        relaxed.wait_for_admin = false;
        r.handle_config(now, &[relaxed]);
        assert_eq!(state(&r, LegId(2)), "joining");
        r.handle_playback_done(now, LegId(2));
        assert_eq!(state(&r, LegId(2)), "in_room");
    }

    #[test]
    fn end_of_an_earlier_prompt_does_not_end_the_next_one() {
        let now = Instant::now();
        let mut r = Rooms::new();
        r.handle_join(
            now,
            LegId(1),
            &room(Some("4321"), false),
            "101",
            "user:101",
            false,
        );
        let first = r.playback_seq(LegId(1)).unwrap();
        keys(&mut r, now, LegId(1), "1#2#3#"); // third wrong code: "wrong, goodbye"
        drain(&mut r);
        // The media thread reports the end of the first prompt after the new Play.
        r.handle_playback_done_of(now, LegId(1), first);
        assert!(
            drain(&mut r).is_empty(),
            "goodbye must be heard before hanging up"
        );
        let last = r.playback_seq(LegId(1)).unwrap();
        r.handle_playback_done_of(now, LegId(1), last);
        assert_eq!(drain(&mut r), vec![RoomCommand::Hangup { leg: LegId(1) }]);
    }

    #[test]
    fn kick_and_mute() {
        let now = Instant::now();
        let mut r = Rooms::new();
        r.handle_join(now, LegId(1), &room(None, false), "101", "user:101", false);
        r.handle_playback_done(now, LegId(1));
        drain(&mut r);
        assert!(r.set_muted(LegId(1), true));
        assert_eq!(
            drain(&mut r),
            vec![RoomCommand::Mute {
                leg: LegId(1),
                muted: true
            }]
        );
        assert!(r.kick(LegId(1)));
        assert_eq!(drain(&mut r), vec![RoomCommand::Hangup { leg: LegId(1) }]);
        assert!(!r.kick(LegId(99)));
    }

    #[test]
    fn a_locked_room_turns_callers_away_but_not_its_administrator_nor_those_it_invites() {
        let now = Instant::now();
        let mut r = Rooms::new();
        let conf = room(Some("4321"), false);
        assert_eq!(
            r.set_locked(7, true),
            Err(LockError::Empty),
            "nobody to lock for"
        );
        r.handle_join(now, LegId(1), &conf, "101", "user:101", true);
        keys(&mut r, now, LegId(1), "4321#");
        r.handle_playback_done(now, LegId(1));
        // A caller was typing the code when the room was locked.
        r.handle_join(now, LegId(2), &conf, "102", "user:102", false);
        r.handle_playback_done(now, LegId(2));
        drain(&mut r);
        r.set_locked(7, true).unwrap();
        assert_eq!(r.locked_rooms(), vec![7]);
        assert_eq!(state(&r, LegId(1)), "in_room", "those in stay");
        keys(&mut r, now, LegId(2), "4321#");
        assert!(played(&drain(&mut r), Prompt::ConferenceLocked));
        r.handle_playback_done(now, LegId(2));
        assert_eq!(drain(&mut r), vec![RoomCommand::Hangup { leg: LegId(2) }]);
        r.handle_leave(now, LegId(2));
        // A new caller hears so at once: no code asked, none to guess.
        r.handle_join(now, LegId(3), &conf, "103", "user:103", false);
        let cmds = drain(&mut r);
        assert!(played(&cmds, Prompt::ConferenceLocked), "{cmds:?}");
        assert!(!played(&cmds, Prompt::EnterAccessCode));
        // The administrator (a second phone) and an invited callee still get in.
        r.handle_join(now, LegId(4), &conf, "101", "user:101", true);
        assert_eq!(state(&r, LegId(4)), "entering_code");
        r.handle_invited(now, LegId(5), &conf, "0612345678", false);
        assert_eq!(state(&r, LegId(5)), "in_room");
        // Unlocked, callers come in again.
        r.set_locked(7, false).unwrap();
        r.handle_join(now, LegId(6), &conf, "106", "user:106", false);
        assert_eq!(state(&r, LegId(6)), "entering_code");
        // The lock ends with the conference: when the last one leaves.
        r.set_locked(7, true).unwrap();
        for leg in [1, 3, 4, 5, 6] {
            r.handle_leave(now, LegId(leg));
        }
        assert!(r.locked_rooms().is_empty());
        r.handle_join(now, LegId(7), &conf, "107", "user:107", false);
        assert_eq!(state(&r, LegId(7)), "entering_code");
    }
}
