// WebRTC audio legs from Chromium into conference rooms: browser phones (SIP.js 0.21.2
// configured as Odoo 17's VoIP widget, and JsSIP 3.13) call a room over SIP WebSocket and
// the PBX answers with str0m (ICE-lite, DTLS-SRTP, BUNDLE, rtcp-mux, a wideband codec:
// Opus or G.722, whichever the PBX puts first).
//
// Chromium's microphone is a fake device playing a WAV of an 880 Hz sine written here
// (--use-file-for-fake-audio-capture). The other participant is a baresip desk phone
// sending 440 Hz and recording what it hears (harness.mjs Baresip). Audio is checked on
// both sides: the page captures its remote track (MediaStreamTrackProcessor, else WebAudio)
// and the test measures tone shares (Goertzel, as the Rust conference tests do).
//
// Run inside a network namespace with only loopback (run.sh does as root), so that
// Chromium's ICE candidates and all media stay on 127.0.0.1.

import assert from 'node:assert/strict';
import path from 'node:path';
import { after, before, describe, test } from 'node:test';

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
  recordRemote,
  selfSignedCert,
  servePhoneLibs,
  SIP_DOMAIN,
  sipJsDial,
  sipJsKeys,
  sipJsRegister,
  sleep,
  startPbx,
  tmpDir,
  userMaker,
  waitInPage,
  writeSineWav,
} from './harness.mjs';

const chromiumMissing = needs(CHROMIUM, 'chromium');
const baresipMissing = needs('baresip', 'baresip-core');

/** The fake microphone's tone and the desk phone's. */
const BROWSER_HZ = 880;
const DESK_HZ = 440;
/**
 * A tab closed mid-call: its WebSocket closes at once (the registration goes within 5 s in
 * phones.test.mjs), and its calls must end as quickly — the browser can neither send a BYE
 * nor receive one any more.
 */
const LEFT_WITHIN_S = 5;

/** The page's peer connection statistics that matter here. */
function rtpStats(page, pcPath = 'window.phone.session.sessionDescriptionHandler.peerConnection') {
  return page.evaluate(async (pcPath) => {
    // eslint-disable-next-line no-eval
    const pc = (0, eval)(pcPath);
    const report = await pc.getStats();
    const out = { inbound: null, outbound: null, codecs: {}, pair: null, local: [], remote: [] };
    report.forEach((s) => {
      if (s.type === 'codec') out.codecs[s.id] = s.mimeType;
      if (s.type === 'inbound-rtp' && s.kind === 'audio') out.inbound = s;
      if (s.type === 'outbound-rtp' && s.kind === 'audio') out.outbound = s;
      if (s.type === 'candidate-pair' && s.nominated && s.state === 'succeeded') out.pair = s;
      if (s.type === 'local-candidate') out.local.push(`${s.address}:${s.port}`);
      if (s.type === 'remote-candidate') out.remote.push(`${s.address}:${s.port}`);
    });
    return {
      packetsReceived: out.inbound?.packetsReceived ?? 0,
      packetsSent: out.outbound?.packetsSent ?? 0,
      inboundCodec: out.codecs[out.inbound?.codecId] ?? null,
      outboundCodec: out.codecs[out.outbound?.codecId] ?? null,
      pairSucceeded: out.pair !== null,
      localCandidates: out.local,
      remoteCandidates: out.remote,
      iceState: pc.iceConnectionState,
      dtlsState: pc.getSenders()[0]?.transport?.state ?? null,
    };
  }, pcPath);
}

/**
 * The audio codec an SDP answer settled on (the first payload type of m=audio), as the
 * API names it (`OPUS`, `G722`, `PCMU`…) and as Chromium's stats do (`audio/opus`…).
 */
function answeredCodec(sdp) {
  const pt = sdp.match(/^m=audio \d+ \S+ (\d+)/m)?.[1];
  const name = pt && sdp.match(new RegExp(`^a=rtpmap:${pt} ([^/\\s]+)/`, 'm'))?.[1];
  assert.ok(name, `a codec in the answer:\n${sdp}`);
  return { api: name.toUpperCase(), mime: `audio/${name}`.toLowerCase() };
}

/**
 * The call settled on a wideband codec (Chromium offers Opus, then G.722): the one the
 * answer put first, reported by the PBX for the participant and used both ways by the page.
 */
function assertWideband(answer, participant, stats) {
  const codec = answeredCodec(answer);
  assert.ok(['OPUS', 'G722'].includes(codec.api), `a wideband codec answered first, not ${codec.api}`);
  assert.equal(participant.codec, codec.api, `the PBX reports the answered codec: ${JSON.stringify(participant)}`);
  assert.equal(String(stats.inboundCodec).toLowerCase(), codec.mime, JSON.stringify(stats));
  assert.equal(String(stats.outboundCodec).toLowerCase(), codec.mime, JSON.stringify(stats));
  return codec.api;
}

// ---- the PBX's view -----------------------------------------------------------------------

/** Waits for `predicate(list)` on the room's participants; returns the list. */
async function roomWhere(pbx, roomId, predicate, what, timeout = 10_000) {
  return eventually(async () => {
    const list = await pbx.participants(roomId);
    assert.ok(predicate(list), `${what}: ${JSON.stringify(list)}`);
    return list;
  }, { timeout, interval: 200, message: what });
}

const inRoom = (list) => list.filter((p) => p.state === 'in_room');
const byCaller = (list, ext) => list.find((p) => p.caller === ext);

// ---- the tests ----------------------------------------------------------------------------

describe('WebRTC audio legs from Chromium into conference rooms', { timeout: 90_000, skip: chromiumMissing }, () => {
  let pbx;
  let b;
  let libs;
  let tones;
  const check = checker(test, () => ({ b, pbx }), 30_000);
  let count = 0;

  /** A fresh user (applied with the room): { extension, username, password }. */
  const newUser = userMaker(() => pbx, 200);

  /** A fresh room (`code`: its access code, or null); applied with the users made before. */
  async function newRoom(code) {
    count += 1;
    const room = await pbx.createConference({ name: `Room ${count}`, extension: String(800 + count), access_code: code });
    await pbx.apply();
    return room;
  }

  before(async () => {
    const dir = tmpDir('tones');
    tones = writeSineWav(path.join(dir, `sine-${BROWSER_HZ}hz.wav`), { hz: BROWSER_HZ, seconds: 20, rate: 48_000 });
    const { cert, key } = selfSignedCert();
    [pbx, libs] = await Promise.all([
      startPbx({ extraArgs: ['--https-listen', '127.0.0.1:0', '--tls-cert', cert, '--tls-key', key] }),
      servePhoneLibs(),
    ]);
    b = await launchPhoneBrowser(tones, { ignoreCertificateErrors: true });
  });

  after(async () => {
    await b?.close();
    await libs?.close();
    await pbx?.close();
  });

  check('SIP.js (Odoo 17 setup, ws://) keys the access code by RFC 4733, joins in a wideband codec, hears the desk phone and is heard', { skip: baresipMissing }, async (t) => {
    const browserUser = await newUser('odoo');
    const deskUser = await newUser('desk');
    const room = await newRoom('2468');
    const desk = await Baresip.start(pbx, { user: deskUser.username, password: deskUser.password, toneHz: DESK_HZ });
    const page = await openPhonePage(b, libs, 'sip.js');
    try {
      // The desk phone goes in first (its own code, RFC 4733 from baresip).
      await desk.dial(pbx, room.extension);
      await roomWhere(pbx, room.id, (l) => byCaller(l, deskUser.extension)?.state === 'entering_code', 'the desk phone asked for the code');
      await desk.sendDigits('2468#');
      await roomWhere(pbx, room.id, (l) => byCaller(l, deskUser.extension)?.state === 'in_room', 'the desk phone in the room');

      await sipJsRegister(page, { server: pbx.wsUrl, user: browserUser.username, password: browserUser.password });
      await sipJsDial(page, room.extension);
      const { answer } = await page.evaluate(() => window.phone.invite);
      t.diagnostic(`answer:\n${answer}`);
      assert.match(answer, /^a=ice-lite/m, 'the PBX is ICE-lite');
      assert.match(answer, /^m=audio \d+ UDP\/TLS\/RTP\/SAVPF \d+/m);
      assert.match(answer, /^a=fingerprint:sha-256 /m);
      assert.match(answer, /^a=rtcp-mux/m);
      assert.match(answer, /^a=group:BUNDLE /m);
      assert.match(answer, /^a=rtpmap:\d+ telephone-event\/8000/m, 'DTMF by RFC 4733 is possible');
      await roomWhere(pbx, room.id, (l) => byCaller(l, browserUser.extension)?.state === 'entering_code', 'the browser asked for the code');
      await sipJsKeys(page, '2468#');
      const list = await roomWhere(pbx, room.id, (l) => inRoom(l).length === 2, 'both in the room');
      const me = byCaller(list, browserUser.extension);
      t.diagnostic(`browser participant: ${JSON.stringify(me)}`);
      const stats = await rtpStats(page);
      t.diagnostic(`page stats: ${JSON.stringify(stats)}`);
      t.diagnostic(`codec: ${assertWideband(answer, me, stats)}`);
      assert.ok(stats.packetsReceived > 0 && stats.packetsSent > 0, JSON.stringify(stats));

      // (a) What the page hears: the desk phone's 440 Hz, not its own 880 Hz.
      await sleep(1000); // past any prompt on entry
      const heard = await recordRemote(page, 3000);
      const secs = heard.samples.length / heard.rate;
      assert.ok(secs > 2.5, `the page recorded ${secs.toFixed(2)} s`);
      assertHears('the page', audioWindow(heard.samples, heard.rate, secs - 2.5, secs), heard.rate, DESK_HZ, BROWSER_HZ, t);

      // (b) What the desk phone heard over its last seconds in the room: the browser's
      // 880 Hz, not its own 440 Hz.
      await desk.hangup();
      await roomWhere(pbx, room.id, (l) => !byCaller(l, deskUser.extension), 'the desk phone left');
      await sleep(300);
      const rec = desk.heard();
      const deskSecs = rec.samples.length / rec.rate;
      assertHears('the desk phone', audioWindow(rec.samples, rec.rate, deskSecs - 3, deskSecs - 0.3), rec.rate, BROWSER_HZ, DESK_HZ, t);

      // The browser hangs up (BYE): its leg leaves, the room is empty.
      await page.evaluate(() => window.phone.session.bye());
      await waitInPage(page, () => window.phone.session.state === 'Terminated', 'the BYE was answered');
      await roomWhere(pbx, room.id, (l) => l.length === 0, 'the room empty');
      assert.deepEqual((await page.evaluate(() => window.phone.errors)), []);
    } finally {
      await desk.kill();
      await page.close();
    }
  });

  check('JsSIP 3.13 keys the access code by SIP INFO and joins the room', async (t) => {
    const user = await newUser('jssip');
    const room = await newRoom('1357');
    const page = await openPhonePage(b, libs, 'jssip');
    try {
      await page.evaluate(
        ({ server, user, password, domain, extension }) => {
          const JsSIP = window.JsSIP;
          const phone = { events: [], errors: [], infos: [] };
          window.phone = phone;
          const ua = new JsSIP.UA({
            sockets: [new JsSIP.WebSocketInterface(server)],
            uri: `sip:${user}@${domain}`,
            authorization_user: user,
            password,
            register: true,
            register_expires: 3600,
            user_agent: `JsSIP ${JsSIP.version}`,
          });
          phone.ua = ua;
          ua.on('registered', () => {
            phone.events.push('registered');
            const session = ua.call(`sip:${extension}@${domain}`, {
              mediaConstraints: { audio: true, video: false },
              pcConfig: { iceServers: [] },
            });
            phone.session = session;
            for (const e of ['progress', 'accepted', 'confirmed', 'ended', 'failed']) {
              session.on(e, (ev) => phone.events.push(`${e}${ev?.cause ? `:${ev.cause}` : ''}`));
            }
            // Each key sent as an INFO, and its answer.
            session.on('newDTMF', (ev) => {
              if (ev.originator !== 'local') return;
              ev.dtmf.on('succeeded', (e) => phone.infos.push(`${ev.dtmf.tone}:${e.response.status_code}`));
              ev.dtmf.on('failed', () => phone.infos.push(`${ev.dtmf.tone}:failed`));
            });
          });
          ua.on('registrationFailed', (e) => phone.events.push(`registrationFailed:${e.cause}`));
          ua.start();
        },
        { server: pbx.wsUrl, user: user.username, password: user.password, domain: SIP_DOMAIN, extension: room.extension },
      );
      await waitInPage(
        page,
        () => window.phone.events.some((e) => e === 'confirmed' || e.startsWith('failed') || e.startsWith('registrationFailed')),
        'JsSIP call confirmed',
      );
      const events = await page.evaluate(() => window.phone.events);
      assert.ok(events.includes('confirmed'), JSON.stringify(events));
      await roomWhere(pbx, room.id, (l) => byCaller(l, user.extension)?.state === 'entering_code', 'JsSIP asked for the code');
      for (const d of '1357#') {
        await page.evaluate((d) => window.phone.session.sendDTMF(d, { transportType: 'INFO' }), d);
        await sleep(250);
      }
      const list = await roomWhere(pbx, room.id, (l) => byCaller(l, user.extension)?.state === 'in_room', 'JsSIP in the room');
      assert.deepEqual(await page.evaluate(() => window.phone.infos), ['1:200', '3:200', '5:200', '7:200', '#:200'], 'each INFO answered 200');
      t.diagnostic(`JsSIP participant: ${JSON.stringify(byCaller(list, user.extension))}`);
      const stats = await rtpStats(page, 'window.phone.session.connection');
      t.diagnostic(`page stats: ${JSON.stringify(stats)}`);
      const answer = await page.evaluate(() => window.phone.session.connection.remoteDescription.sdp);
      t.diagnostic(`codec: ${assertWideband(answer, byCaller(list, user.extension), stats)}`);
      assert.ok(stats.packetsReceived > 0 && stats.packetsSent > 0, JSON.stringify(stats));
      await page.evaluate(() => window.phone.session.terminate());
      await waitInPage(page, () => window.phone.events.some((e) => e.startsWith('ended')), 'JsSIP call ended');
      await roomWhere(pbx, room.id, (l) => l.length === 0, 'the room empty');
    } finally {
      await page.close();
    }
  });

  check('a browser that closes its tab mid-call leaves the room within seconds; the desk phone stays', { skip: baresipMissing, timeout: 60_000 }, async (t) => {
    const browserUser = await newUser('closer');
    const deskUser = await newUser('stayer');
    const room = await newRoom(null);
    const desk = await Baresip.start(pbx, { user: deskUser.username, password: deskUser.password, toneHz: DESK_HZ });
    const page = await openPhonePage(b, libs, 'sip.js');
    let closed = false;
    try {
      await desk.dial(pbx, room.extension);
      await sipJsRegister(page, { server: pbx.wsUrl, user: browserUser.username, password: browserUser.password });
      await sipJsDial(page, room.extension);
      await roomWhere(pbx, room.id, (l) => inRoom(l).length === 2, 'both in the room');
      await sleep(1000);
      // The tab goes away without a BYE (no beforeunload handler hangs up); its WebSocket
      // closes with it, so nothing of that dialog can reach the browser any more.
      await page.close({ runBeforeUnload: false });
      closed = true;
      const closedAt = Date.now();
      // Measured up to ICE consent's 30 s, so that a slow end is reported with its time
      // and the rest is still checked.
      await roomWhere(pbx, room.id, (l) => !byCaller(l, browserUser.extension), 'the browser left the room', 35_000);
      const took = (Date.now() - closedAt) / 1000;
      t.diagnostic(`the browser's leg ended ${took.toFixed(1)} s after its tab closed${took > LEFT_WITHIN_S ? `: ${pbx.logsMatching(/media failed/).slice(-1)}` : ''}`);
      // The room goes on: the desk phone is still in it, a while later.
      await sleep(1000);
      const list = await pbx.participants(room.id);
      assert.equal(byCaller(list, deskUser.extension)?.state, 'in_room', JSON.stringify(list));
      assert.ok(desk.running, 'baresip is still running');
      assert.ok(
        took <= LEFT_WITHIN_S,
        `the leg of a closed tab ends within ${LEFT_WITHIN_S} s (its WebSocket closed at once), not when ICE consent runs out: it took ${took.toFixed(1)} s`,
      );
      await desk.hangup();
      await roomWhere(pbx, room.id, (l) => l.length === 0, 'the room empty');
    } finally {
      await desk.kill();
      if (!closed) await page.close();
    }
  });

  check("Odoo's exact flow over wss://: register, dial the coded room, sendDtmf digit by digit, in the room in a wideband codec", async (t) => {
    const user = await newUser('secure');
    const room = await newRoom('9753');
    const page = await openPhonePage(b, libs, 'sip.js');
    try {
      await sipJsRegister(page, { server: pbx.wssUrl, user: user.username, password: user.password });
      const binding = (await pbx.registrations()).find((r) => r.user === user.username || String(r.user).startsWith(`sip:${user.username}@`));
      assert.equal(binding?.transport, 'WSS', JSON.stringify(binding));
      await sipJsDial(page, room.extension);
      await roomWhere(pbx, room.id, (l) => byCaller(l, user.extension)?.state === 'entering_code', 'asked for the code');
      await sipJsKeys(page, '9753#');
      const list = await roomWhere(pbx, room.id, (l) => byCaller(l, user.extension)?.state === 'in_room', 'in the room');
      const stats = await rtpStats(page);
      t.diagnostic(`page stats: ${JSON.stringify(stats)}`);
      const { answer } = await page.evaluate(() => window.phone.invite);
      t.diagnostic(`codec: ${assertWideband(answer, byCaller(list, user.extension), stats)}`);
      assert.ok(stats.packetsReceived > 0 && stats.packetsSent > 0, JSON.stringify(stats));
      await page.evaluate(() => window.phone.session.bye());
      await waitInPage(page, () => window.phone.session.state === 'Terminated', 'the BYE was answered');
      await roomWhere(pbx, room.id, (l) => l.length === 0, 'the room empty');
    } finally {
      await page.close();
    }
  });
});
