// Calls between users: a browser (SIP.js 0.21.2 configured as Odoo 17's VoIP widget,
// registered over ws://) and baresip desk phones, through the PBX, which anchors every call
// with a browser on one side (WebRTC on the browser's leg, plain RTP on the desk phone's,
// transcoded between them). Audio is checked by content on every side: Chromium's
// microphone is a fake device playing an 880 Hz sine, each desk phone sends its own tone
// and records what it hears, the page captures its remote track (harness.mjs).
//
// Users (a fresh PBX for each test): Alice 101 (the browser), Bob 102 (a desk phone that
// calls without registering), Carol 103 (a registered desk phone answering by itself) and
// Dave 104 (nobody registered).
//
// Chromium's default audio processing (its noise suppression above all) takes the steady
// sine down by some 17 dB before sending it: the checks are on tone shares, not levels.
//
// Run inside a network namespace with only loopback (run.sh does as root), so that
// Chromium's ICE candidates and all media stay on 127.0.0.1.

import assert from 'node:assert/strict';
import path from 'node:path';
import { after, afterEach, before, beforeEach, describe, test } from 'node:test';

import {
  assertHears,
  audioWindow,
  Baresip,
  checker,
  CHROMIUM,
  eventually,
  launchPhoneBrowser,
  needs,
  openPhonePage,
  pageState,
  recordRemote,
  servePhoneLibs,
  SIP_DOMAIN,
  sipJsAnswer,
  sipJsIncoming,
  sipJsRegister,
  sleep,
  startPbx,
  tmpDir,
  waitInPage,
  writeSineWav,
} from './harness.mjs';

const chromiumMissing = needs(CHROMIUM, 'chromium');
const baresipMissing = needs('baresip', 'baresip-core');

const ALICE = { name: 'Alice', extension: '101', username: 'alice', hz: 880 };
const BOB = { name: 'Bob', extension: '102', username: 'bob', hz: 440 };
const CAROL = { name: 'Carol', extension: '103', username: 'carol', hz: 660 };
const DAVE = { name: 'Dave', extension: '104', username: 'dave' };
for (const u of [ALICE, BOB, CAROL, DAVE]) u.password = `${u.username}-secret-${Math.random().toString(36).slice(2, 8)}`;

/** An open room (no access code). */
const ROOM = '800';

/** How long a connected call runs before a party hangs up, so that its recording's tail is all conversation. */
const TALK_MS = 3500;

/** The last `seconds` of a recording, minus its final `skip` seconds (the hang-up). */
function tail({ rate, samples }, seconds, skip = 0) {
  const secs = samples.length / rate;
  assert.ok(secs >= seconds + skip, `a recording of ${secs.toFixed(2)} s, not the ${seconds + skip} s expected`);
  return { rate, samples: audioWindow(samples, rate, secs - seconds - skip, secs - skip) };
}

/**
 * Sends REFER to `sip:<target>@<domain>` from the page's call as Odoo 17's `transfer()`
 * does and, as its `_onReferAccepted()` → `_terminateSession()` does, BYE at once once the
 * REFER is accepted. Resolves with { target, status, reason, byeStatus } when the REFER is
 * answered (byeStatus: the answer to that BYE, recorded for diagnostics only).
 */
async function sipJsRefer(page, target) {
  await page.evaluate(
    ({ target, domain }) => {
      const SIP = window.SIP;
      const phone = window.phone;
      const session = phone.session;
      const refer = { target, status: null, reason: null, byeStatus: null };
      (phone.refers ??= []).push(refer);
      const byeAnswered = (r) => {
        refer.byeStatus = r.message.statusCode;
      };
      session
        .refer(SIP.UserAgent.makeURI(`sip:${target}@${domain}`), {
          requestDelegate: {
            onAccept: (r) => {
              refer.status = r.message.statusCode;
              refer.reason = r.message.reasonPhrase;
              if (session.state === SIP.SessionState.Established) {
                session
                  .bye({ requestDelegate: { onAccept: byeAnswered, onReject: byeAnswered } })
                  .catch((e) => phone.errors.push(`bye: ${e}`));
              }
            },
            onReject: (r) => {
              refer.status = r.message.statusCode;
              refer.reason = r.message.reasonPhrase;
            },
          },
        })
        .catch((e) => phone.errors.push(`refer: ${e}`));
    },
    { target, domain: SIP_DOMAIN },
  );
  await waitInPage(page, () => window.phone.refers.at(-1).status !== null || window.phone.errors.length, `the REFER to ${target} was answered`);
  return page.evaluate(() => window.phone.refers.at(-1));
}

/** The SIP requests `method` the page received over its WebSocket (raw text). */
function received(page, method) {
  return page.sipMessages.filter((m) => !m.sent && m.text.startsWith(`${method} `)).map((m) => m.text);
}

const header = (message, name) => message.match(new RegExp(`^${name}:\\s*(.*?)\\r?$`, 'mi'))?.[1] ?? null;
const body = (message) => message.split(/\r?\n\r?\n/).slice(1).join('\n\n');

describe('calls between a browser user and desk phones, and blind transfer', { timeout: 90_000, skip: chromiumMissing || baresipMissing }, () => {
  let pbx;
  let b;
  let libs;
  const check = checker(test, () => ({ b, pbx }), 40_000);

  /** Waits for `predicate(list)` on GET /api/v1/calls; returns the list. */
  async function callsWhere(predicate, what, timeout = 10_000) {
    return eventually(async () => {
      const list = await pbx.calls();
      assert.ok(predicate(list), `${what}: ${JSON.stringify(list)}`);
      return list;
    }, { timeout, interval: 200, message: what });
  }

  const between = (caller, callee) => (c) => c.caller === caller.extension && c.callee === callee.extension;

  /**
   * Alice's browser, registered as Odoo does and letting calls ring; Bob's desk phone calls
   * her, the page sees the INVITE and answers it as Odoo does. Resolves with { page, bob,
   * caller (what the page read from the INVITE) } once the call's media is connected; the
   * page and the phone go when the test ends.
   */
  async function bobCallsAlice(t) {
    const page = await openPhonePage(b, libs, 'sip.js');
    t.after(() => page.close());
    await sipJsRegister(page, { server: pbx.wsUrl, user: ALICE.username, password: ALICE.password, incoming: 'ring' });
    const bob = await Baresip.start(pbx, { user: BOB.username, password: BOB.password, toneHz: BOB.hz });
    t.after(() => bob.kill());
    await bob.dial(pbx, ALICE.extension);
    const caller = await sipJsIncoming(page);
    t.diagnostic(`the page's INVITE from ${JSON.stringify(caller)}`);
    await sipJsAnswer(page);
    await callsWhere((l) => l.some((c) => between(BOB, ALICE)(c) && c.state === 'answered'), 'Bob → Alice answered');
    return { page, bob, caller };
  }

  before(async () => {
    const tone = writeSineWav(path.join(tmpDir('tones'), `sine-${ALICE.hz}hz.wav`), { hz: ALICE.hz, seconds: 20, rate: 48_000 });
    libs = await servePhoneLibs();
    b = await launchPhoneBrowser(tone);
  });

  after(async () => {
    await b?.close();
    await libs?.close();
  });

  // A PBX of its own for each test: the same four users and one room, and nothing left of
  // another test. Two media threads, whatever the machine, so that where a call's legs go
  // is known.
  beforeEach(async () => {
    pbx = await startPbx({ extraArgs: ['--media-threads', '2'] });
    for (const u of [ALICE, BOB, CAROL, DAVE]) await pbx.createUser(u.name, u.extension, u.username, u.password);
    await pbx.createConference({ name: 'Team', extension: ROOM });
    await pbx.apply();
  });

  /** Legs on each media thread, from /metrics (`confero_media_thread_legs{thread="N"}`). */
  async function legsPerThread() {
    const text = await (await fetch(`${pbx.url}/metrics`)).text();
    return [...text.matchAll(/^confero_media_thread_legs\{thread="(\d+)"\} (\d+)$/gm)]
      .map(([, thread, legs]) => [Number(thread), Number(legs)])
      .sort(([a], [b]) => a - b)
      .map(([, legs]) => legs);
  }

  afterEach(async () => {
    const p = pbx;
    pbx = null;
    await p?.close();
  });

  check('a desk phone calls a browser user', async (t) => {
    const { page, bob, caller } = await bobCallsAlice(t);
    assert.equal(caller.user, BOB.extension, 'the caller number (the From URI user part, as Odoo reads it) is Bob\'s extension');

    // What the page hears: Bob's 440 Hz, not its own 880 Hz.
    await sleep(500);
    const heard = await recordRemote(page, 3000);
    assertHears('Alice (the page)', tail(heard, 2.5).samples, heard.rate, BOB.hz, ALICE.hz, t);

    // Bob hangs up: the PBX ends the page's session (BYE), no call is left.
    await bob.hangup();
    await waitInPage(page, () => window.phone.session.state === 'Terminated', 'the page\'s session ended after Bob hung up');
    await callsWhere((l) => l.length === 0, 'no call left');
    await sleep(300);
    // What Bob heard over his last seconds: Alice's 880 Hz, not his own 440 Hz.
    const rec = bob.heard();
    assertHears('Bob', tail(rec, 3, 0.3).samples, rec.rate, ALICE.hz, BOB.hz, t);
    assert.deepEqual(await page.evaluate(() => window.phone.errors), []);
  });

  check('a browser user transfers a call blind (REFER), as Odoo does', async (t) => {
    const carol = await Baresip.start(pbx, {
      user: CAROL.username,
      password: CAROL.password,
      toneHz: CAROL.hz,
      register: true,
      autoAnswer: true,
    });
    t.after(() => carol.kill());
    const { page, bob } = await bobCallsAlice(t);
    // The call carries audio before the transfer: Alice hears Bob.
    const earlier = await recordRemote(page, 2500);
    assertHears('Alice before the transfer', tail(earlier, 2).samples, earlier.rate, BOB.hz, ALICE.hz, t);

    // Alice transfers Bob to Carol: REFER, 202, and her BYE right away (Odoo).
    const refer = await sipJsRefer(page, CAROL.extension);
    t.diagnostic(`REFER → ${JSON.stringify(refer)}`);
    assert.equal(refer.status, 202, `the REFER is accepted: ${JSON.stringify(refer)}`);
    await waitInPage(page, () => window.phone.session.state === 'Terminated', 'Alice\'s session ended');
    // The PBX reported the transfer in one NOTIFY: sipfrag 200, subscription over.
    const notifies = await eventually(() => {
      const n = received(page, 'NOTIFY');
      assert.ok(n.length >= 1, 'a NOTIFY reached the page');
      return n;
    }, { timeout: 3000, message: 'the NOTIFY of the REFER' });
    const referAt = page.sipMessages.findIndex((m) => m.sent && m.text.startsWith('REFER '));
    t.diagnostic(`the page's SIP from its REFER on: ${page.sipMessages.slice(referAt).map((m) => `${m.sent ? '→' : '←'} ${m.text.split('\r\n')[0]} (${header(m.text, 'CSeq')})`).join('; ')}`);
    assert.equal(notifies.length, 1, `one NOTIFY:\n${notifies.join('\n----\n')}`);
    assert.match(header(notifies[0], 'Event') ?? '', /^refer\b/i);
    assert.match(header(notifies[0], 'Subscription-State') ?? '', /^terminated\b/i);
    assert.match(body(notifies[0]), /^SIP\/2\.0 200 OK/);

    // Carol's phone rings with Bob's number, answers by itself; the PBX has Bob → Carol.
    const ring = await eventually(() => {
      const calls = carol.incomingCalls();
      assert.equal(calls.length, 1, `one call reached Carol's phone: ${JSON.stringify(calls)}`);
      return calls[0];
    }, { timeout: 10_000, message: 'Carol\'s phone rang' });
    t.diagnostic(`Carol's phone: incoming call from ${JSON.stringify(ring)}`);
    assert.equal(ring.user, BOB.extension, `Carol's phone shows Bob's number: ${JSON.stringify(ring)}`);
    const calls = await callsWhere(
      (l) => l.some((c) => between(BOB, CAROL)(c) && c.state === 'answered'),
      'Bob → Carol answered',
    );
    t.diagnostic(`calls after the transfer: ${JSON.stringify(calls)}`);
    assert.ok(
      !calls.some((c) => [c.caller, c.callee].includes(ALICE.extension)),
      `Alice is in no call any more: ${JSON.stringify(calls)}`,
    );

    // Bob and Carol talk; then Bob hangs up and nothing is left.
    await sleep(TALK_MS);
    await bob.hangup();
    await callsWhere((l) => l.length === 0, 'no call left');
    await sleep(300);
    // Bob heard Carol's 660 Hz, neither his own 440 Hz nor Alice's 880 Hz any more; Carol
    // heard Bob's 440 Hz.
    const bobRec = bob.heard();
    assertHears('Bob after the transfer', tail(bobRec, 3, 0.3).samples, bobRec.rate, CAROL.hz, [BOB.hz, ALICE.hz], t);
    const carolRec = carol.heard();
    assertHears('Carol', tail(carolRec, 3, 0.3).samples, carolRec.rate, BOB.hz, [CAROL.hz, ALICE.hz], t);
    assert.deepEqual(await page.evaluate(() => window.phone.errors), []);
  });

  check('a browser user transfers a caller into a room on the other media thread', async (t) => {
    // Carol is in the room first: the room takes one media thread.
    const carol = await Baresip.start(pbx, { user: CAROL.username, password: CAROL.password, toneHz: CAROL.hz });
    t.after(() => carol.kill());
    await carol.dial(pbx, ROOM);
    const room = await pbx.conferenceByExtension(ROOM);
    await eventually(async () => {
      const list = await pbx.participants(room.id);
      assert.equal(list.filter((p) => p.state === 'in_room').length, 1, JSON.stringify(list));
    }, { timeout: 10_000, message: 'Carol in the room' });
    // Bob's call to Alice goes to the idle thread: both its legs there.
    const { page, bob } = await bobCallsAlice(t);
    const before = await eventually(async () => {
      const legs = await legsPerThread();
      assert.deepEqual([...legs].sort(), [1, 2], `Carol's room on one thread, Bob's call on the other: ${legs}`);
      return legs;
    }, { timeout: 3000, message: 'legs per media thread before the transfer' });
    const roomThread = before.indexOf(1);

    // Alice transfers Bob into the room: his leg, sockets and stream move to the room's
    // thread, and he talks with Carol.
    const refer = await sipJsRefer(page, ROOM);
    assert.equal(refer.status, 202, `the REFER is accepted: ${JSON.stringify(refer)}`);
    await waitInPage(page, () => window.phone.session.state === 'Terminated', 'Alice\'s session ended');
    await eventually(async () => {
      const list = await pbx.participants(room.id);
      assert.equal(list.filter((p) => p.state === 'in_room').length, 2, JSON.stringify(list));
    }, { timeout: 10_000, message: 'Bob in the room with Carol' });
    const after = await eventually(async () => {
      const legs = await legsPerThread();
      assert.equal(legs[roomThread], 2, `both legs on the room's thread: ${legs}`);
      assert.equal(legs[1 - roomThread], 0, `nothing left on the other: ${legs}`);
      return legs;
    }, { timeout: 3000, message: 'legs per media thread after the transfer' });
    t.diagnostic(`legs per media thread: ${before} before the transfer, ${after} after`);

    await sleep(TALK_MS);
    await bob.hangup();
    await sleep(300);
    await carol.hangup();
    await sleep(300);
    const bobRec = bob.heard();
    assertHears('Bob in the room', tail(bobRec, 3, 0.3).samples, bobRec.rate, CAROL.hz, [BOB.hz, ALICE.hz], t);
    // Carol's last seconds with Bob, clear of his leaving (and its tone).
    const carolRec = carol.heard();
    assertHears('Carol', tail(carolRec, 3, 0.8).samples, carolRec.rate, BOB.hz, [CAROL.hz, ALICE.hz], t);
  });

  check('a REFER to an unknown target is refused and the call goes on', async (t) => {
    const { page, bob } = await bobCallsAlice(t);
    // A number nobody has (no user, no room, no route out), then a user with no device.
    const unknown = await sipJsRefer(page, '999999');
    t.diagnostic(`REFER to 999999 → ${JSON.stringify(unknown)}`);
    assert.ok([404, 480].includes(unknown.status), `the REFER to an unknown number is refused 404 or 480: ${JSON.stringify(unknown)}`);
    const offline = await sipJsRefer(page, DAVE.extension);
    t.diagnostic(`REFER to ${DAVE.extension} (not registered) → ${JSON.stringify(offline)}`);
    assert.equal(offline.status, 480, `the REFER to a user with no device is refused 480: ${JSON.stringify(offline)}`);
    assert.deepEqual(received(page, 'NOTIFY'), [], 'no NOTIFY for a refused REFER');

    // The call goes on, with its audio both ways.
    await sleep(500);
    assert.equal(await page.evaluate(() => window.phone.session.state), 'Established', await pageState(page));
    await callsWhere((l) => l.length === 1 && between(BOB, ALICE)(l[0]) && l[0].state === 'answered', 'Bob → Alice still up');
    const heard = await recordRemote(page, 3000);
    assertHears('Alice after the refused REFERs', tail(heard, 2.5).samples, heard.rate, BOB.hz, ALICE.hz, t);
    await bob.hangup();
    await waitInPage(page, () => window.phone.session.state === 'Terminated', 'the page\'s session ended after Bob hung up');
    await callsWhere((l) => l.length === 0, 'no call left');
    await sleep(300);
    const rec = bob.heard();
    assertHears('Bob after the refused REFERs', tail(rec, 3, 0.3).samples, rec.rate, ALICE.hz, BOB.hz, t);
    assert.deepEqual(await page.evaluate(() => window.phone.errors), []);
  });
});
