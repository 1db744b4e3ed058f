//! Which media bridge each leg and mix lives on, when a server runs several.
//!
//! One bridge per media thread, each with its own clock and sockets: a mix (a room, an
//! anchored call's private mix) must live wholly on one of them, since a tick mixes only
//! what its own bridge holds. [`Placement`] turns the engine's single stream of
//! [`MediaCommand`]s into commands for each bridge, and moves for the few legs that must
//! change bridge:
//!
//! - A leg opens on the bridge of the mix it is headed for ([`MediaCommand::Place`], sent
//!   by the engine before the open) when that mix is placed already; otherwise on the
//!   least-loaded bridge, and the mix it is headed for is placed there with it. A new room
//!   therefore lands on the least-loaded bridge, and its later participants join it there
//!   without moving.
//! - A leg told to join a mix on another bridge (a transfer into a room, a leg opened
//!   before its mix was known) moves there first: [`Routed::Move`], which the shell carries
//!   out with [`Bridge::take_leg`](crate::bridge::Bridge::take_leg) and
//!   [`Bridge::put_leg`](crate::bridge::Bridge::put_leg).
//! - A mix keeps its bridge while any open leg is in it or headed for it.
//!
//! Load is counted in open legs: every leg costs a decode, a share of a mix and an encode
//! each tick, whatever its mix.
//!
//! Sans-IO like the bridge itself: commands in, routed commands out, nothing else.

use crate::bridge::{LegId, MediaCommand, MixId};
use crate::idmap::IdMap;

/// A bridge, by its index among the server's media threads.
pub type BridgeIndex = usize;

/// What the shell is to do with one command.
#[derive(Debug, PartialEq)]
pub enum Routed {
    /// Hand the command to this bridge.
    To(BridgeIndex, MediaCommand),
    /// Move the leg from one bridge to another before anything else reaches it: commands
    /// routed after this one to `to` may concern it, and must wait for it to arrive.
    Move {
        /// The leg that moves.
        leg: LegId,
        /// The bridge that holds it now.
        from: BridgeIndex,
        /// The bridge that will hold it.
        to: BridgeIndex,
    },
}

#[derive(Debug)]
struct LegPlace {
    bridge: BridgeIndex,
    /// The mix it is in or headed for, which keeps that mix's place.
    home: Option<MixId>,
}

#[derive(Debug)]
struct MixPlace {
    bridge: BridgeIndex,
    /// Open legs whose home it is.
    legs: usize,
}

/// See the [module documentation](self).
#[derive(Debug)]
pub struct Placement {
    /// Open legs per bridge.
    load: Vec<usize>,
    legs: IdMap<LegId, LegPlace>,
    mixes: IdMap<MixId, MixPlace>,
    /// Where legs about to open are headed.
    headed: IdMap<LegId, MixId>,
}

impl Placement {
    /// Placement over `bridges` bridges (at least one).
    pub fn new(bridges: usize) -> Placement {
        Placement {
            load: vec![0; bridges.max(1)],
            legs: IdMap::default(),
            mixes: IdMap::default(),
            headed: IdMap::default(),
        }
    }

    /// Open legs on each bridge.
    pub fn load(&self) -> &[usize] {
        &self.load
    }

    /// The bridge leg `leg` is on, if it is open.
    pub fn bridge_of(&self, leg: LegId) -> Option<BridgeIndex> {
        self.legs.get(&leg).map(|l| l.bridge)
    }

    /// The bridge mix `mix` lives on, if it is placed.
    pub fn bridge_of_mix(&self, mix: MixId) -> Option<BridgeIndex> {
        self.mixes.get(&mix).map(|m| m.bridge)
    }

    fn least_loaded(&self) -> BridgeIndex {
        let mut best = 0;
        for (i, &load) in self.load.iter().enumerate() {
            if load < self.load[best] {
                best = i;
            }
        }
        best
    }

    /// Routes one command of the engine; what the shell must do comes out through `out`,
    /// in order. Commands for legs that are not open (already closed, or never opened
    /// because their ports could not be bound) go to the first bridge, which ignores them
    /// as it would have alone.
    pub fn route(&mut self, cmd: MediaCommand, out: &mut impl FnMut(Routed)) {
        match cmd {
            MediaCommand::Place { leg, near } => {
                self.headed.insert(leg, near);
            }
            MediaCommand::Open { leg, .. }
            | MediaCommand::OpenWebRtc { leg, .. }
            | MediaCommand::OfferWebRtc { leg, .. } => {
                if self.legs.contains_key(&leg) {
                    // An id opened twice replaces the first leg, where that leg is.
                    self.forget(leg);
                }
                let home = self.headed.remove(&leg);
                let bridge = home
                    .and_then(|mix| self.bridge_of_mix(mix))
                    .unwrap_or_else(|| self.least_loaded());
                self.legs.insert(leg, LegPlace { bridge, home: None });
                self.load[bridge] += 1;
                if let Some(mix) = home {
                    self.set_home(leg, Some(mix));
                }
                out(Routed::To(bridge, cmd));
            }
            MediaCommand::Mix { leg, mix } => {
                let Some(from) = self.bridge_of(leg) else {
                    return out(Routed::To(0, cmd));
                };
                self.set_home(leg, Some(mix));
                let to = self.mixes[&mix].bridge;
                if to != from {
                    self.load[from] -= 1;
                    self.load[to] += 1;
                    if let Some(l) = self.legs.get_mut(&leg) {
                        l.bridge = to;
                    }
                    out(Routed::Move { leg, from, to });
                }
                out(Routed::To(to, cmd));
            }
            MediaCommand::Unmix { leg } => {
                self.set_home(leg, None);
                out(Routed::To(self.bridge_of(leg).unwrap_or(0), cmd));
            }
            MediaCommand::Close { leg } => {
                let bridge = self.forget(leg).unwrap_or(0);
                self.headed.remove(&leg);
                out(Routed::To(bridge, cmd));
            }
            MediaCommand::MixTone { mix, .. } => {
                // A mix nobody is in has nobody to hear its tone.
                if let Some(bridge) = self.bridge_of_mix(mix) {
                    out(Routed::To(bridge, cmd));
                }
            }
            MediaCommand::ReofferWebRtc { .. }
            | MediaCommand::AnswerWebRtc { .. }
            | MediaCommand::Update { .. }
            | MediaCommand::Play { .. }
            | MediaCommand::Mute { .. }
            | MediaCommand::SendDigit { .. } => {
                let bridge = cmd.leg().and_then(|leg| self.bridge_of(leg));
                out(Routed::To(bridge.unwrap_or(0), cmd));
            }
        }
    }

    /// Makes `home` the mix leg `leg` is in or headed for, placing that mix on the leg's
    /// bridge if it has no place yet, and letting the old one go once no leg needs it.
    fn set_home(&mut self, leg: LegId, home: Option<MixId>) {
        let Some(place) = self.legs.get_mut(&leg) else {
            return;
        };
        let bridge = place.bridge;
        let old = std::mem::replace(&mut place.home, home);
        if old == home {
            return;
        }
        if let Some(mix) = home {
            self.mixes
                .entry(mix)
                .or_insert(MixPlace { bridge, legs: 0 })
                .legs += 1;
        }
        if let Some(old) = old {
            self.release_mix(old);
        }
    }

    fn release_mix(&mut self, mix: MixId) {
        if let Some(m) = self.mixes.get_mut(&mix) {
            m.legs -= 1;
            if m.legs == 0 {
                self.mixes.remove(&mix);
            }
        }
    }

    /// Forgets an open leg; returns the bridge it was on.
    fn forget(&mut self, leg: LegId) -> Option<BridgeIndex> {
        let place = self.legs.remove(&leg)?;
        self.load[place.bridge] -= 1;
        if let Some(mix) = place.home {
            self.release_mix(mix);
        }
        Some(place.bridge)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bridge::LegMedia;
    use crate::codec::CodecKind;
    use std::net::{IpAddr, Ipv4Addr, SocketAddr};

    fn open(leg: u64) -> MediaCommand {
        MediaCommand::Open {
            leg: LegId(leg),
            port: 20_000 + leg as u16 * 2,
            media: LegMedia {
                codec: CodecKind::Pcmu,
                payload_type: 0,
                dtmf_payload_type: Some(101),
                remote: SocketAddr::from(([127, 0, 0, 1], 40_000)),
                two_way: true,
            },
            rtcp_mux: false,
            signalled_from: IpAddr::V4(Ipv4Addr::LOCALHOST),
        }
    }

    fn route(p: &mut Placement, cmd: MediaCommand) -> Vec<Routed> {
        let mut out = Vec::new();
        p.route(cmd, &mut |r| out.push(r));
        out
    }

    /// Opens `leg` headed for `mix`, then mixes it; returns the bridge it landed on.
    fn join(p: &mut Placement, leg: u64, mix: MixId) -> BridgeIndex {
        route(
            p,
            MediaCommand::Place {
                leg: LegId(leg),
                near: mix,
            },
        );
        let opened = route(p, open(leg));
        let [Routed::To(bridge, _)] = opened.as_slice() else {
            panic!("an open is one command: {opened:?}");
        };
        let mixed = route(
            p,
            MediaCommand::Mix {
                leg: LegId(leg),
                mix,
            },
        );
        assert_eq!(
            mixed,
            vec![Routed::To(
                *bridge,
                MediaCommand::Mix {
                    leg: LegId(leg),
                    mix
                }
            )]
        );
        *bridge
    }

    #[test]
    fn new_rooms_go_to_the_least_loaded_bridge_and_their_participants_follow() {
        let mut p = Placement::new(2);
        let a = join(&mut p, 1, MixId::Room(1));
        for leg in 2..=5 {
            assert_eq!(
                join(&mut p, leg, MixId::Room(1)),
                a,
                "a room stays on one bridge"
            );
        }
        let b = join(&mut p, 10, MixId::Room(2));
        assert_ne!(a, b, "the second room takes the idle bridge");
        // Room 2 has one leg, room 1 five: a third room goes beside room 2.
        assert_eq!(join(&mut p, 20, MixId::Room(3)), b);
        assert_eq!(p.load()[a], 5);
        assert_eq!(p.load()[b], 2);
        // A room that empties gives its place up; one that comes back is placed afresh.
        route(&mut p, MediaCommand::Close { leg: LegId(20) });
        assert_eq!(p.bridge_of_mix(MixId::Room(3)), None);
        assert_eq!(join(&mut p, 21, MixId::Room(3)), b);
    }

    #[test]
    fn a_leg_joining_a_mix_on_another_bridge_moves_before_it_is_mixed() {
        let mut p = Placement::new(2);
        let room = join(&mut p, 1, MixId::Room(7));
        // A leg opened with no destination (the caller's side of a call) lands on the other
        // bridge, then is transferred into the room.
        let opened = route(&mut p, open(2));
        let other = 1 - room;
        assert!(matches!(opened.as_slice(), [Routed::To(b, _)] if *b == other));
        let prompts = MediaCommand::Play {
            leg: LegId(2),
            prompts: Vec::new(),
            then_music: false,
            seq: 1,
        };
        assert_eq!(
            route(&mut p, prompts.clone()),
            vec![Routed::To(other, prompts)]
        );
        let mix = MediaCommand::Mix {
            leg: LegId(2),
            mix: MixId::Room(7),
        };
        assert_eq!(
            route(&mut p, mix.clone()),
            vec![
                Routed::Move {
                    leg: LegId(2),
                    from: other,
                    to: room
                },
                Routed::To(room, mix)
            ]
        );
        assert_eq!(p.load()[room], 2);
        assert_eq!(p.load()[other], 0);
        let mute = MediaCommand::Mute {
            leg: LegId(2),
            muted: true,
        };
        assert_eq!(route(&mut p, mute.clone()), vec![Routed::To(room, mute)]);
        let close = MediaCommand::Close { leg: LegId(2) };
        assert_eq!(route(&mut p, close.clone()), vec![Routed::To(room, close)]);
        assert_eq!(p.load()[room], 1);
    }

    #[test]
    fn a_mix_keeps_its_bridge_while_a_leg_is_headed_for_it() {
        let mut p = Placement::new(3);
        // The caller's leg of an anchored call opens headed for the call's mix; the
        // callee's leg, opened later while other bridges are emptier, follows it.
        let call = MixId::Call(9);
        route(
            &mut p,
            MediaCommand::Place {
                leg: LegId(1),
                near: call,
            },
        );
        let [Routed::To(first, _)] = route(&mut p, open(1))[..] else {
            panic!("one command");
        };
        route(&mut p, open(50));
        route(&mut p, open(51));
        assert_eq!(join(&mut p, 2, call), first);
        // Leaving a mix lets it go once nobody else is in it or headed for it.
        route(&mut p, MediaCommand::Unmix { leg: LegId(2) });
        assert_eq!(p.bridge_of_mix(call), Some(first));
        route(&mut p, MediaCommand::Close { leg: LegId(1) });
        assert_eq!(p.bridge_of_mix(call), None);
        assert_eq!(p.load().iter().sum::<usize>(), 3);
    }

    #[test]
    fn commands_for_unknown_legs_and_empty_mixes_change_nothing() {
        let mut p = Placement::new(2);
        let close = MediaCommand::Close { leg: LegId(3) };
        assert_eq!(route(&mut p, close.clone()), vec![Routed::To(0, close)]);
        let tone = MediaCommand::MixTone {
            mix: MixId::Room(1),
            tone: crate::bridge::Prompt::JoinTone,
        };
        assert_eq!(route(&mut p, tone), vec![]);
        let mix = MediaCommand::Mix {
            leg: LegId(4),
            mix: MixId::Room(1),
        };
        assert_eq!(route(&mut p, mix.clone()), vec![Routed::To(0, mix)]);
        assert_eq!(p.bridge_of_mix(MixId::Room(1)), None);
        assert_eq!(p.load(), &[0, 0]);
        // A leg placed but never opened (its ports could not be had) leaves nothing.
        route(
            &mut p,
            MediaCommand::Place {
                leg: LegId(5),
                near: MixId::Room(2),
            },
        );
        route(&mut p, MediaCommand::Close { leg: LegId(5) });
        assert!(p.headed.is_empty());
    }
}
