//! Whole calls through a network that loses, delays, reorders and duplicates: the engine
//! and a media bridge against phones that retransmit as phones do. Each test runs several
//! seeds; a failure names its seed, and the same seed replays the same run.

mod common;

use std::time::Duration;

use common::sim::{PhoneEvent, SimWorld};
use common::{numbers, trunk};
use confero_pbx::config::TrunkTransport;
use confero_sim::Link;

/// 20 % of datagrams lost, 2 % duplicated, 10–60 ms of delay: reordering everywhere.
fn lossy() -> Link {
    Link {
        loss: 0.2,
        duplicate: 0.02,
        delay: Duration::from_millis(10),
        jitter: Duration::from_millis(50),
    }
}

/// Alice and Bob dial the Sales room (access code 1234) and are answered.
fn room_call(seed: u64) -> (SimWorld, usize, usize) {
    let mut w = SimWorld::new(seed, lossy());
    let alice = w.phone("alice", [127, 0, 0, 2], 440.0);
    let bob = w.phone("bob", [127, 0, 0, 3], 1000.0);
    for p in [alice, bob] {
        w.act(p, |ph, now| ph.dial(now, "800"));
    }
    w.run(Duration::from_secs(6));
    (w, alice, bob)
}

#[test]
fn a_simulated_run_replays_exactly_from_its_seed() {
    let run = |seed| {
        let (mut w, alice, _) = room_call(seed);
        w.act(alice, |ph, now| ph.key(now, "1234#"));
        w.run(Duration::from_secs(3));
        w.net.stats()
    };
    let first = run(11);
    assert!(first.sent > 500, "{first:?}");
    assert_eq!(run(11), first, "the same seed, the same datagrams");
    assert_ne!(run(12).fingerprint, first.fingerprint);
}

#[test]
fn a_room_call_through_20_percent_loss_and_reordering_gets_the_code_in_and_the_audio_through() {
    for seed in 1..=4 {
        // Both are answered (retransmissions beat the loss), then key the code.
        let (mut w, alice, bob) = room_call(seed);
        for p in [alice, bob] {
            assert!(
                w.phones[p].outgoing_dialog().is_some(),
                "seed {seed}: {} answered: {:?}",
                w.phones[p].user,
                w.phones[p].events
            );
            w.act(p, |ph, now| ph.key(now, "1234#"));
        }
        w.run(Duration::from_secs(8));
        let rooms = w.engine.conference_participants();
        assert_eq!(rooms.len(), 2, "seed {seed}: {rooms:?}");
        assert!(
            rooms.iter().all(|p| p.state == "in_room"),
            "seed {seed}: the code got in: {rooms:?}"
        );
        let stats = w.net.stats();
        assert!(
            stats.lost > 100 && stats.reordered > 100,
            "seed {seed}: {stats:?}"
        );
        // Each hears the other's tone, not its own (loss concealed, order restored).
        let (a, b) = (&w.phones[alice], &w.phones[bob]);
        for (who, hears, not) in [(a, 1000.0, 440.0), (b, 440.0, 1000.0)] {
            let heard = who.heard(hears, 100);
            let own = who.heard(not, 100);
            eprintln!(
                "seed {seed}: {} hears {hears} Hz at {heard:.0}, itself at {own:.0}",
                who.user
            );
            assert!(
                heard > 2000.0,
                "seed {seed}: {} hears {hears} Hz at {heard}",
                who.user
            );
            assert!(
                own < heard / 10.0,
                "seed {seed}: {} hears itself at {own}",
                who.user
            );
        }
    }
}

#[test]
fn a_fork_race_under_reordering_leaves_exactly_one_dialog() {
    // Seeds in which both devices answered (the late one then gets ACK and BYE).
    let mut raced = 0;
    for seed in 1..=6 {
        let mut w = SimWorld::new(
            seed,
            Link {
                loss: 0.1,
                duplicate: 0.05,
                delay: Duration::from_millis(5),
                jitter: Duration::from_millis(80),
            },
        );
        let alice = w.phone("alice", [127, 0, 0, 2], 440.0);
        let desk = w.phone("bob", [127, 0, 0, 3], 1000.0);
        let mobile = w.phone("bob", [127, 0, 0, 4], 1500.0);
        for p in [desk, mobile] {
            w.phones[p].answer_after = Some(Duration::from_millis(30));
            w.act(p, |ph, now| ph.register(now));
        }
        w.run(Duration::from_secs(10));
        for p in [desk, mobile] {
            assert!(
                w.phones[p].events.contains(&PhoneEvent::Registered),
                "seed {seed}: {:?}",
                w.phones[p].events
            );
        }
        w.act(alice, |ph, now| ph.dial(now, "102"));
        w.run(Duration::from_secs(40));
        // Alice is in one dialog; every 2xx she saw came from it.
        let a = &w.phones[alice];
        let dialog = a
            .outgoing_dialog()
            .unwrap_or_else(|| panic!("seed {seed}: Alice is answered: {:?}", a.events));
        let tags: Vec<_> = a
            .events
            .iter()
            .filter_map(|e| match e {
                PhoneEvent::Answered { to_tag } => Some(to_tag.clone()),
                _ => None,
            })
            .collect();
        assert!(
            tags.iter().all(|t| *t == dialog.remote_tag),
            "seed {seed}: one dialog for Alice: {tags:?}"
        );
        // Exactly one of Bob's devices is still in the call; the other was cancelled or,
        // having answered too, hung up on.
        let up: Vec<usize> = [desk, mobile]
            .into_iter()
            .filter(|&p| w.phones[p].answered_dialogs() == 1)
            .collect();
        assert_eq!(
            up.len(),
            1,
            "seed {seed}: desk {:?}, mobile {:?}",
            w.phones[desk].events,
            w.phones[mobile].events
        );
        let loser = if up[0] == desk { mobile } else { desk };
        let ended = &w.phones[loser].events;
        assert!(
            ended.contains(&PhoneEvent::Cancelled) || ended.contains(&PhoneEvent::Bye),
            "seed {seed}: the other device let go: {ended:?}"
        );
        if ended.contains(&PhoneEvent::Bye) {
            raced += 1;
        }
        assert_eq!(w.engine.calls().len(), 1, "seed {seed}");
        assert_eq!(w.engine.calls()[0].state, "answered", "seed {seed}");
    }
    assert!(
        raced > 0,
        "no seed made both devices answer: the race was not run"
    );
}

#[test]
fn a_blind_transfer_through_loss_hands_the_caller_over_with_its_audio() {
    for seed in 1..=4 {
        let mut w = SimWorld::configured(seed, lossy(), |c| {
            // The provider's gateway at 127.0.0.9:5060 (calls from it are the trunk's).
            let mut t = trunk(TrunkTransport::Udp, false);
            t.host = "127.0.0.9".into();
            t.port = 5060;
            c.trunks.push(t);
            numbers(c);
        });
        let carrier = w.phone("carrier", [127, 0, 0, 9], 440.0);
        let bob = w.phone("bob", [127, 0, 0, 3], 1000.0);
        let alice = w.phone("alice", [127, 0, 0, 2], 1500.0);
        for (p, after) in [(bob, 100), (alice, 300)] {
            w.phones[p].answer_after = Some(Duration::from_millis(after));
            w.act(p, |ph, now| ph.register(now));
        }
        w.run(Duration::from_secs(8));
        // A caller from the phone network reaches Bob's direct number; Bob answers.
        w.act(carrier, |ph, now| ph.dial(now, "+3225550101"));
        w.run(Duration::from_secs(8));
        assert!(
            w.phones[carrier].outgoing_dialog().is_some(),
            "seed {seed}: {:?}",
            w.phones[carrier].events
        );
        assert_eq!(w.phones[bob].answered_dialogs(), 1, "seed {seed}");
        // Bob transfers the caller to Alice (101) and is let go.
        w.act(bob, |ph, now| ph.refer(now, "101"));
        w.run(Duration::from_secs(15));
        let bob_events = &w.phones[bob].events;
        assert!(
            bob_events.contains(&PhoneEvent::Bye),
            "seed {seed}: {bob_events:?}"
        );
        assert_eq!(w.phones[bob].answered_dialogs(), 0, "seed {seed}");
        assert_eq!(w.phones[alice].answered_dialogs(), 1, "seed {seed}");
        // The caller never left its call, and now talks with Alice.
        assert!(w.phones[carrier].outgoing_dialog().is_some(), "seed {seed}");
        let (c, a) = (&w.phones[carrier], &w.phones[alice]);
        for (who, hears, not) in [(c, 1500.0, 1000.0), (a, 440.0, 1000.0)] {
            let heard = who.heard(hears, 100);
            let bobs = who.heard(not, 100);
            assert!(
                heard > 2000.0,
                "seed {seed}: {} hears {hears} Hz at {heard}",
                who.user
            );
            assert!(
                bobs < heard / 10.0,
                "seed {seed}: {} still hears Bob at {bobs}",
                who.user
            );
        }
        let stats = w.net.stats();
        assert!(
            stats.lost > 50 && stats.reordered > 50,
            "seed {seed}: {stats:?}"
        );
        // Alice's leg opened on the emptier bridge with the new call's mix: the caller's
        // leg moved there, once, with its audio (heard above), and nothing stayed behind.
        assert_eq!(w.moves, 1, "seed {seed}");
        let mut load = w.placement.load().to_vec();
        load.sort_unstable();
        assert_eq!(load, [0, 2], "seed {seed}");
        let legs: Vec<usize> = w.bridges.iter().map(|b| b.leg_count()).collect();
        assert_eq!(legs, w.placement.load(), "seed {seed}");
    }
}

/// Runs until phone `i` has the answer to its re-INVITE (retransmissions beat the loss),
/// at most 20 s.
fn until_updated(w: &mut SimWorld, i: usize) -> Option<PhoneEvent> {
    for _ in 0..40 {
        if let Some(e) = w.phones[i]
            .events
            .iter()
            .rev()
            .find(|e| matches!(e, PhoneEvent::Updated(_)))
        {
            let e = e.clone();
            w.phones[i].events.clear();
            return Some(e);
        }
        w.run(Duration::from_millis(500));
    }
    None
}

#[test]
fn hold_and_resume_through_loss_in_a_call_between_two_phones() {
    for seed in 1..=4 {
        let mut w = SimWorld::new(seed, lossy());
        let alice = w.phone("alice", [127, 0, 0, 2], 440.0);
        let bob = w.phone("bob", [127, 0, 0, 3], 1000.0);
        w.phones[bob].answer_after = Some(Duration::from_millis(200));
        w.act(bob, |ph, now| ph.register(now));
        w.run(Duration::from_secs(6));
        w.act(alice, |ph, now| ph.dial(now, "102"));
        w.run(Duration::from_secs(8));
        assert!(
            w.phones[alice].outgoing_dialog().is_some(),
            "seed {seed}: {:?}",
            w.phones[alice].events
        );
        // Alice puts Bob on hold: the PBX relays her re-INVITE, Bob answers recvonly and
        // stops sending, Alice gets the answer relayed back.
        w.act(alice, |ph, now| ph.hold(now, true));
        let answer = until_updated(&mut w, alice);
        assert_eq!(answer, Some(PhoneEvent::Updated(200)), "seed {seed}");
        assert!(
            w.phones[bob]
                .events
                .contains(&PhoneEvent::Reinvited { held: true }),
            "seed {seed}: {:?}",
            w.phones[bob].events
        );
        w.run(Duration::from_secs(1));
        let during = [alice, bob].map(|p| w.phones[p].received());
        w.run(Duration::from_secs(5));
        let after = [alice, bob].map(|p| w.phones[p].received());
        assert_eq!(during, after, "seed {seed}: nobody sends on hold");
        // Off hold: audio both ways again, and the call is still the PBX's one call.
        resume_and_hear_each_other(&mut w, alice, bob, seed);
        assert_eq!(w.engine.calls().len(), 1, "seed {seed}");
        assert_eq!(w.engine.calls()[0].state, "answered", "seed {seed}");
    }
}

#[test]
fn a_room_participant_on_hold_longer_than_the_rtp_timeout_stays_and_is_heard_again() {
    for seed in 1..=4 {
        let (mut w, alice, bob) = room_call(seed);
        for p in [alice, bob] {
            w.act(p, |ph, now| ph.key(now, "1234#"));
        }
        w.run(Duration::from_secs(8));
        // Alice holds for 40 s, silent, past the bridge's 30 s RTP timeout: her leg is
        // held, not dead.
        w.act(alice, |ph, now| ph.hold(now, true));
        assert_eq!(
            until_updated(&mut w, alice),
            Some(PhoneEvent::Updated(200)),
            "seed {seed}"
        );
        w.run(Duration::from_secs(40));
        let rooms = w.engine.conference_participants();
        assert_eq!(rooms.len(), 2, "seed {seed}: {rooms:?}");
        assert!(
            !w.phones[alice].events.contains(&PhoneEvent::Bye),
            "seed {seed}: {:?}",
            w.phones[alice].events
        );
        resume_and_hear_each_other(&mut w, alice, bob, seed);
    }
}

/// Alice (440 Hz) takes the call off hold; then she and Bob (1,000 Hz) hear each other.
fn resume_and_hear_each_other(w: &mut SimWorld, alice: usize, bob: usize, seed: u64) {
    w.act(alice, |ph, now| ph.hold(now, false));
    assert_eq!(
        until_updated(w, alice),
        Some(PhoneEvent::Updated(200)),
        "seed {seed}"
    );
    w.run(Duration::from_secs(4));
    let (a, b) = (&w.phones[alice], &w.phones[bob]);
    assert!(
        a.heard(1000.0, 100) > 2000.0,
        "seed {seed}: Alice hears Bob"
    );
    assert!(b.heard(440.0, 100) > 2000.0, "seed {seed}: Bob hears Alice");
}
