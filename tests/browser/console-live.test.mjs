// The console's live side in Chromium, on its own PBX: an open room page that rides out a
// restart of the PBX (banner while it is away, event stream back with a snapshot, the
// session still valid), the talking indicator following a SIPp caller's audio, a user's
// registered devices counted live, phone-sized screens, and keyboard use of the
// conferences list and its pop-ups.
//
// Audio comes the way the Rust conference tests send it: a pcap of PCMU RTP written here
// (a 440 Hz tone, then silence) that SIPp replays with play_pcap_audio from its media port.

import assert from 'node:assert/strict';
import fs from 'node:fs';
import path from 'node:path';
import { after, before, describe, test } from 'node:test';

import {
  checker,
  openSignedIn,
  CHROMIUM,
  dial,
  eventually,
  field,
  freeUdpPort,
  inlineScenario,
  launchBrowser,
  needs,
  registerPhone,
  signIn,
  SIPP_DIR,
  Sipp,
  startPbx,
  submitAndWait,
  tmpDir,
} from './harness.mjs';

const chromiumMissing = needs(CHROMIUM, 'chromium');
const sippMissing = needs('sipp', 'sip-tester');

const USERS = [
  // name, extension, SIP username, SIP password
  ['Alice', '101', 'alice', 'alice-secret'],
  ['Bob', '102', 'bob', 'bob-secret'],
  ['Carol', '103', 'carol', 'carol-secret'],
  ['Dave', '104', 'dave', 'dave-secret'],
];

const PHONE = { width: 390, height: 844 };

// ---- audio: a PCMU RTP pcap for SIPp's play_pcap_audio ----------------------------------

/** G.711 µ-law of one 16-bit sample (as the Rust tests' linear_to_ulaw). */
function linearToUlaw(sample) {
  const BIAS = 0x84;
  let s = sample;
  let sign = 0;
  if (s < 0) {
    s = -s;
    sign = 0x80;
  }
  s = Math.min(s + BIAS, 0x7fff);
  let exponent = 7;
  for (let mask = 0x4000; exponent > 0 && (s & mask) === 0; mask >>= 1) exponent--;
  const mantissa = (s >> (exponent + 3)) & 0x0f;
  return ~(sign | (exponent << 4) | mantissa) & 0xff;
}

/** 8 kHz samples: `toneMs` of a 440 Hz sine (about −12 dBFS), then `silenceMs` of silence. */
function toneThenSilence(toneMs, silenceMs) {
  const tone = Math.round((toneMs * 8000) / 1000);
  const pcm = new Int16Array(tone + Math.round((silenceMs * 8000) / 1000));
  for (let i = 0; i < tone; i++) pcm[i] = Math.round(8000 * Math.sin((2 * Math.PI * 440 * i) / 8000));
  return pcm;
}

/**
 * Writes `pcm` as a pcap of PCMU RTP packets (20 ms each, Ethernet/IPv4/UDP on loopback,
 * 20 ms apart); SIPp replaces addresses and ports when it plays it (as write_pcap in
 * crates/server/tests/conference.rs).
 */
function writePcmuPcap(file, pcm) {
  const chunks = [];
  const global = Buffer.alloc(24);
  global.writeUInt32LE(0xa1b2c3d4, 0);
  global.writeUInt16LE(2, 4);
  global.writeUInt16LE(4, 6);
  global.writeUInt32LE(65535, 16);
  global.writeUInt32LE(1, 20); // Ethernet
  chunks.push(global);
  for (let n = 0; n * 160 < pcm.length; n++) {
    const frame = pcm.subarray(n * 160, n * 160 + 160);
    const rtp = Buffer.alloc(12 + frame.length);
    rtp[0] = 0x80;
    rtp[1] = n === 0 ? 0x80 : 0x00; // marker on the first packet, PT 0 (PCMU)
    rtp.writeUInt16BE((1000 + n) & 0xffff, 2);
    rtp.writeUInt32BE(n * 160, 4);
    rtp.writeUInt32BE(0x12345678, 8);
    for (let i = 0; i < frame.length; i++) rtp[12 + i] = linearToUlaw(frame[i]);
    const udpLen = 8 + rtp.length;
    const ipLen = 20 + udpLen;
    const eth = Buffer.alloc(14);
    eth.writeUInt16BE(0x0800, 12);
    const ip = Buffer.from([0x45, 0, ipLen >> 8, ipLen & 0xff, 0, 0, 0, 0, 64, 17, 0, 0, 127, 0, 0, 1, 127, 0, 0, 1]);
    const udp = Buffer.from([0x17, 0x70, 0x17, 0x70, udpLen >> 8, udpLen & 0xff, 0, 0]);
    const packet = Buffer.concat([eth, ip, udp, rtp]);
    const record = Buffer.alloc(16);
    const usec = n * 20_000;
    record.writeUInt32LE(Math.floor(usec / 1_000_000), 0);
    record.writeUInt32LE(usec % 1_000_000, 4);
    record.writeUInt32LE(packet.length, 8);
    record.writeUInt32LE(packet.length, 12);
    chunks.push(record, packet);
  }
  fs.writeFileSync(file, Buffer.concat(chunks));
  return file;
}

// ---- SIPp scenarios written here ----------------------------------------------------------

/**
 * caller.xml.in with an outcome that, once in the room, plays `pcap` (after `pauseMs`) and
 * then stays until the PBX hangs up (a kick). Returns the scenario's path.
 */
function talkingCallerScenario(dir, pcap, pauseMs) {
  const outcome = `
  <recv response="180" optional="true"/>
  <recv response="183" optional="true"/>
  <recv response="200" rtd="true" rrs="true"/>
  <send>
    <![CDATA[
      ACK [next_url] SIP/2.0
      Via: SIP/2.0/[transport] [local_ip]:[local_port];branch=[branch];rport
      From: <sip:caller@[remote_ip]>;tag=[pid]call[call_number]
      To: <sip:[service]@[remote_ip]>[peer_tag_param]
      [routes]
      Call-ID: [call_id]
      CSeq: 2 ACK
      Max-Forwards: 70
      Content-Length: 0

    ]]>
  </send>
  <pause milliseconds="${pauseMs}"/>
  <nop><action><exec play_pcap_audio="${pcap}"/></action></nop>
  <recv request="BYE"/>
  <send>
    <![CDATA[
      SIP/2.0 200 OK
      [last_Via:]
      [last_From:]
      [last_To:]
      [last_Call-ID:]
      [last_CSeq:]
      Content-Length: 0

    ]]>
  </send>
`;
  const xml = fs.readFileSync(path.join(SIPP_DIR, 'caller.xml.in'), 'utf8').replaceAll('@OUTCOME@', outcome);
  return inlineScenario(dir, `talking-caller-${Date.now()}`, xml);
}

/** REGISTER with Expires: 0 (digest auth): removes the binding of [service] at contact_port. */
const UNREGISTER_XML = `<?xml version="1.0" encoding="ISO-8859-1" ?>
<!DOCTYPE scenario SYSTEM "sipp.dtd">
<scenario name="unregister with digest auth">
  <send retrans="500">
    <![CDATA[
      REGISTER sip:[remote_ip] SIP/2.0
      Via: SIP/2.0/[transport] [local_ip]:[local_port];branch=[branch];rport
      From: <sip:[service]@[remote_ip]>;tag=[pid]unreg[call_number]
      To: <sip:[service]@[remote_ip]>
      Call-ID: [call_id]
      CSeq: 1 REGISTER
      Contact: <sip:[service]@[local_ip]:[contact_port];transport=[transport]>
      Max-Forwards: 70
      Expires: 0
      User-Agent: SIPp
      Content-Length: 0

    ]]>
  </send>
  <recv response="401" auth="true"/>
  <send retrans="500">
    <![CDATA[
      REGISTER sip:[remote_ip] SIP/2.0
      Via: SIP/2.0/[transport] [local_ip]:[local_port];branch=[branch];rport
      From: <sip:[service]@[remote_ip]>;tag=[pid]unreg[call_number]
      To: <sip:[service]@[remote_ip]>
      Call-ID: [call_id]
      CSeq: 2 REGISTER
      Contact: <sip:[service]@[local_ip]:[contact_port];transport=[transport]>
      [authentication]
      Max-Forwards: 70
      Expires: 0
      User-Agent: SIPp
      Content-Length: 0

    ]]>
  </send>
  <recv response="200"/>
</scenario>
`;

describe('console live', { skip: chromiumMissing }, () => {
  let pbx;
  let b; // launchBrowser() result
  let page; // the main tab, signed in on first use

  before(async () => {
    pbx = await startPbx();
    for (const u of USERS) await pbx.createUser(...u);
    b = await launchBrowser({ baseURL: pbx.url });
    page = b.page;
  });

  after(async () => {
    await b?.close();
    await pbx?.close();
  });

  const check = checker(test, () => ({ b, pbx }), 45_000);

  /** Opens `path` in `p` (the main tab by default), signing in when asked to. */
  const open = (path, p = page) => openSignedIn(p, path);

  /** A room created and applied through the API. */
  async function appliedRoom(name, extension) {
    const room = await pbx.createConference({ name, extension });
    await pbx.apply();
    return room;
  }

  /** Marks the document so that a later check can tell it was not reloaded. */
  async function markDocument(p, mark) {
    await p.evaluate((m) => {
      window.__consoleLiveMark = m;
    }, mark);
  }
  async function assertNotReloaded(p, mark) {
    assert.equal(await p.evaluate(() => window.__consoleLiveMark), mark, 'the page was not reloaded');
  }

  const participantRow = (p, text) => p.locator('tr[data-participant-id]').filter({ hasText: text });

  async function participantOf(roomId, caller) {
    return eventually(async () => {
      const p = (await pbx.participants(roomId)).find((x) => x.caller === caller);
      assert.ok(p, `participant ${caller} in room ${roomId}`);
      return p;
    }, { timeout: 10_000 });
  }

  /** Cleanup: hangs up on whoever is still in the room (errors ignored: the test's own count). */
  async function kickAll(roomId) {
    try {
      for (const p of await pbx.participants(roomId)) {
        await pbx.api('POST', `/api/v1/conferences/${roomId}/participants/${p.id}/kick`, {});
      }
    } catch {
      // the PBX is down or the room is gone
    }
  }

  // ---- 1. restart -------------------------------------------------------------------------

  check('an open room page rides out a PBX restart: banner, live again, session kept', { skip: sippMissing }, async () => {
    const room = await appliedRoom('Restart', '820');
    await open(`/conferences/${room.id}`);
    await page.getByText('Nobody is in this room.').waitFor();
    // A form loaded before the restart, posted after it (its _csrf is the stored session's).
    const editTab = await b.newPage();
    let firstCaller;
    let secondCaller;
    try {
      await open(`/conferences/${room.id}/edit`, editTab);

      firstCaller = await dial(pbx, { target: '820', user: 'bob', password: 'bob-secret' });
      await participantRow(page, '102').getByText('In the room').waitFor({ timeout: 15_000 });
      await markDocument(page, 'before-restart');
      const banner = page.locator('#live-status');
      assert.equal(await banner.isVisible(), false, 'no banner while live updates flow');

      const addresses = { http: pbx.http, sip: pbx.sip };
      await pbx.restart({
        whileDown: async () => {
          await banner.waitFor({ state: 'visible', timeout: 10_000 });
          assert.equal((await banner.textContent()).trim(), 'Live updates interrupted — reconnecting…');
          assert.equal(await banner.getAttribute('role'), 'status', 'announced to screen readers');
          await b.shot('08-restart-banner');
        },
      });
      assert.deepEqual({ http: pbx.http, sip: pbx.sip }, addresses, 'same ports after the restart');

      secondCaller = await dial(pbx, { target: '820', user: 'carol', password: 'carol-secret' });
      const carol = participantRow(page, '103');
      await carol.getByText('In the room').waitFor({ timeout: 20_000 }); // reconnected, no reload
      await assertNotReloaded(page, 'before-restart');
      await eventually(async () => assert.equal(await participantRow(page, '102').count(), 0),
        { message: 'the caller hung up by the restart is gone from the page' });
      await eventually(async () => {
        if (await banner.isVisible()) assert.match((await banner.textContent()).trim(), /^Live updates are back\.?$/);
      }, { message: 'the banner goes away or says live updates are back' });
      assert.equal(await page.getByTestId('live-count').first().textContent().then((t) => t.trim()), '1');
      await b.shot('08-restart-live-again');

      // The edit form loaded before the restart saves without a new sign-in.
      const pendingBefore = await pbx.pending();
      await field(editTab, 'Name').fill('Restart room');
      const saved = await submitAndWait(editTab, () => editTab.getByRole('button', { name: 'Save', exact: true }).click());
      assert.ok([302, 303].includes(saved.status()), `Save after the restart: a redirect, got ${saved.status()}`);
      assert.equal(new URL(editTab.url()).pathname, '/conferences', 'not sent to the sign-in page');
      assert.match(await editTab.getByTestId('flash').textContent(), /Conference “Restart room” saved\./);
      assert.equal(await pbx.pending(), pendingBefore + 1);
      const applied = await submitAndWait(editTab, () =>
        editTab.getByRole('button', { name: /^\s*Apply changes/ }).click());
      assert.ok([302, 303].includes(applied.status()), `Apply changes after the restart: ${applied.status()}`);
      assert.notEqual(new URL(editTab.url()).pathname, '/login');
      await eventually(async () => assert.equal(await pbx.pending(), 0), { timeout: 5000, message: 'applied' });
      assert.equal((await pbx.conferenceByExtension('820')).name, 'Restart room');
    } finally {
      await kickAll(room.id);
      await firstCaller?.kill();
      await secondCaller?.kill();
      await editTab.close();
    }
  });

  // ---- 2. talking --------------------------------------------------------------------------

  check('the talking indicator follows a caller’s audio', { skip: sippMissing }, async () => {
    const room = await appliedRoom('Talk', '830');
    await open(`/conferences/${room.id}`);
    await markDocument(page, 'talking');
    const dir = tmpDir('talking');
    const pcap = writePcmuPcap(path.join(dir, 'tone-440hz.pcap'), toneThenSilence(3000, 1000));
    const scenarioFile = talkingCallerScenario(dir, pcap, 1500);
    const caller = await Sipp.spawn('talking-dave', scenarioFile, await freeUdpPort(), [
      '-s', '830', '-au', 'dave', '-ap', 'dave-secret', pbx.sip,
    ], { timeoutMs: 30_000 });
    try {
      const row = participantRow(page, '104');
      await row.getByText('In the room').waitFor({ timeout: 15_000 });
      const talking = row.getByTestId('talking');
      await eventually(async () => assert.equal(await talking.getAttribute('data-talking'), 'true'),
        { timeout: 8000, interval: 50, message: 'talking while the tone plays' });
      await b.shot('09-talking');
      await eventually(async () => assert.equal(await talking.getAttribute('data-talking'), 'false'),
        { timeout: 8000, interval: 50, message: 'silent once the tone stops' });
      await assertNotReloaded(page, 'talking');
      const p = await participantOf(room.id, '104');
      assert.equal(p.talking, false, 'the API agrees');
      assert.ok(p.packets_received > 100, `the tone arrived (${p.packets_received} packets)`);
      // Call quality follows too (statistics come every 2 s).
      await eventually(async () => assert.doesNotMatch(await row.textContent(), /No audio yet/),
        { timeout: 5000, message: 'call quality shown once audio came' });
      await pbx.apiExpect(204, 'POST', `/api/v1/conferences/${room.id}/participants/${p.id}/kick`, {});
      await caller.expectSuccess();
    } finally {
      await kickAll(room.id);
      await caller.kill();
    }
  });

  // ---- 3. registered devices ----------------------------------------------------------------

  check('Users: a phone registering and unregistering changes the device count live', { skip: sippMissing }, async () => {
    const alice = (await pbx.apiExpect(200, 'GET', '/api/v1/users')).find((u) => u.sip_username === 'alice');
    await open('/users');
    await markDocument(page, 'users');
    const devices = page.locator(`tr[data-user-id="${alice.id}"]`).getByTestId('devices');
    assert.equal((await devices.textContent()).trim(), '0');

    const { localPort } = await registerPhone(pbx, 'alice', 'alice-secret');
    await eventually(async () => assert.equal((await devices.textContent()).trim(), '1'),
      { timeout: 10_000, message: 'one device after REGISTER, without reload' });
    await b.shot('09-users-device');

    const unregister = await Sipp.spawn('unregister-alice', inlineScenario(tmpDir('scenario'), 'unregister', UNREGISTER_XML),
      localPort, ['-s', 'alice', '-au', 'alice', '-ap', 'alice-secret', '-key', 'contact_port', String(localPort), pbx.sip],
      { timeoutMs: 15_000 });
    await unregister.expectSuccess();
    await eventually(async () => assert.equal((await devices.textContent()).trim(), '0'),
      { timeout: 10_000, message: 'no device after REGISTER with Expires: 0' });
    await assertNotReloaded(page, 'users');
  });

  // ---- 4. phone-sized screen ----------------------------------------------------------------

  check('on a phone-sized screen the pages fit the width and the menu is there', { skip: sippMissing }, async () => {
    const room = await appliedRoom('Mobile', '840');
    const context = await b.newContext({ viewport: PHONE, isMobile: true, hasTouch: true, deviceScaleFactor: 2 });
    let caller;
    try {
      const p = await context.newPage();
      caller = await dial(pbx, { target: '840', user: 'bob', password: 'bob-secret' });
      await participantOf(room.id, '102');
      const problems = [];
      for (const [urlPath, shot] of [
        ['/conferences', '10-mobile-conferences'],
        ['/conferences/new', '11-mobile-new-conference'],
        [`/conferences/${room.id}`, '12-mobile-room'],
        ['/users', '13-mobile-users'],
      ]) {
        await open(urlPath, p);
        if (urlPath === `/conferences/${room.id}`) await participantRow(p, '102').waitFor();
        const m = await p.evaluate(() => ({
          scrollWidth: document.documentElement.scrollWidth,
          innerWidth: window.innerWidth,
          // What sticks out on the right, outside a scrolling table container.
          wide: [...document.querySelectorAll('body *')]
            .filter((e) => !e.closest('.table-wrap') && !e.closest('nav') && e.getBoundingClientRect().right > window.innerWidth + 1)
            .slice(0, 5)
            .map((e) => `${e.tagName.toLowerCase()}${e.id ? `#${e.id}` : ''}${e.className && typeof e.className === 'string' ? `.${e.className.trim().split(/\s+/).join('.')}` : ''} (right ${Math.round(e.getBoundingClientRect().right)})`),
        }));
        await b.shot(shot, p);
        assert.equal(m.innerWidth, PHONE.width, `${urlPath}: the layout viewport is the phone's width`);
        if (m.scrollWidth > PHONE.width + 1) {
          problems.push(`${urlPath}: page is ${m.scrollWidth} px wide on a ${PHONE.width} px screen; sticking out: ${m.wide.join(', ')}`);
        }
        if (urlPath === '/conferences') {
          // Pending changes can be reviewed (and discarded) from a phone too.
          const toChanges = p.locator('a[href="/changes"]');
          const shown = await toChanges.evaluateAll((as) => as.some((a) => a.checkVisibility()));
          if (!shown) problems.push(`${urlPath}: no visible link to /changes (the pending changes page)`);
        }
        // Every menu link on screen as the page opens: none hidden past the right edge.
        const nav = p.getByRole('navigation', { name: 'Main' });
        for (const name of ['Conferences', 'Incoming numbers', 'Users', 'Trunks', 'Settings']) {
          const link = nav.getByRole('link', { name, exact: true });
          assert.ok(await link.isVisible(), `${urlPath}: menu link ${name} is rendered`);
          const box = await link.evaluate((a) => {
            const r = a.getBoundingClientRect();
            return { left: Math.round(r.left), right: Math.round(r.right), top: Math.round(r.top), bottom: Math.round(r.bottom) };
          });
          if (box.left < 0 || box.right > PHONE.width + 1 || box.top < 0 || box.bottom > PHONE.height) {
            problems.push(`${urlPath}: menu link ${name} is off screen (x ${box.left}…${box.right}, y ${box.top}…${box.bottom})`);
          }
        }
      }
      assert.deepEqual(problems, [], 'at 390×844: no horizontal page overflow, every menu link on screen, pending changes reachable');
    } finally {
      await kickAll(room.id);
      await caller?.kill();
      await context.close();
    }
  });

  // ---- 5. keyboard -------------------------------------------------------------------------------

  check('keyboard: Tab reaches menu, Add and Invite; dialogs open, cancel and confirm by keys', async () => {
    const scratch = await pbx.createConference({ name: 'Scratch', extension: '850' });
    await open('/conferences');
    const row = page.locator(`tr[data-conference-id="${scratch.id}"]`);
    const invite = row.getByRole('button', { name: 'Invite', exact: true });
    const rowDelete = row.getByRole('button', { name: 'Delete', exact: true });

    // Tab from the top of the page until the Scratch row's Invite has the focus.
    await page.evaluate(() => document.activeElement?.blur());
    const seen = [];
    for (let i = 0; i < 80; i++) {
      await page.keyboard.press('Tab');
      const focused = await page.evaluate(() => {
        const e = document.activeElement;
        return {
          text: (e?.textContent || '').trim().replace(/\s+/g, ' '),
          inNav: !!e?.closest('nav[aria-label="Main"]'),
          invite: e?.dataset?.invite ?? null,
        };
      });
      seen.push(focused);
      if (focused.invite === String(scratch.id)) break;
    }
    const order = (pred, what) => {
      const i = seen.findIndex(pred);
      assert.ok(i >= 0, `Tab reaches ${what}; focus went through: ${seen.map((s) => s.text).join(' | ')}`);
      return i;
    };
    const menu = ['Conferences', 'Incoming numbers', 'Users', 'Trunks', 'Settings']
      .map((name) => order((s) => s.inNav && s.text === name, `the menu link ${name}`));
    const add = order((s) => s.text === 'Add a conference', 'Add a conference');
    const inv = order((s) => s.invite === String(scratch.id), 'the row’s Invite');
    assert.ok(Math.max(...menu) < add && add < inv, 'in reading order: menu, Add a conference, the row');
    assert.ok(await invite.evaluate((e) => e === document.activeElement));

    // Enter on Invite: the pop-up, with the focus in its input; Escape closes it.
    await page.keyboard.press('Enter');
    const inviteDialog = page.locator('#invite-dialog');
    await inviteDialog.waitFor({ state: 'visible' });
    assert.equal(await page.evaluate(() => document.activeElement?.id), 'invite-target', 'focus in the phone number input');
    assert.ok(await field(inviteDialog, 'Phone number or extension').evaluate((e) => e === document.activeElement));
    assert.equal(new URL(page.url()).pathname, '/conferences', 'the pop-up, not the no-script page');
    await page.keyboard.press('Escape');
    await inviteDialog.waitFor({ state: 'hidden' });
    assert.equal(await inviteDialog.evaluate((d) => d.open), false);
    assert.ok(await invite.evaluate((e) => e === document.activeElement), 'focus back on Invite');

    // Delete: Escape cancels the confirmation, nothing is deleted.
    const pendingBefore = await pbx.pending();
    await rowDelete.focus();
    await page.keyboard.press('Enter');
    const confirm = page.locator('#confirm-dialog');
    await confirm.waitFor({ state: 'visible' });
    assert.equal(await confirm.getAttribute('aria-labelledby'), 'confirm-title');
    assert.match(await confirm.textContent(), /Delete the conference “Scratch” \(850\)\?/);
    const ok = confirm.getByRole('button', { name: 'Delete', exact: true });
    assert.ok(await ok.evaluate((e) => e === document.activeElement), 'focus on the dialog’s Delete');
    await b.shot('14-keyboard-confirm');
    await page.keyboard.press('Escape');
    await confirm.waitFor({ state: 'hidden' });
    await page.waitForTimeout(300); // a deletion would have been posted by now
    assert.equal(new URL(page.url()).pathname, '/conferences');
    assert.equal((await pbx.api('GET', `/api/v1/conferences/${scratch.id}`)).status, 200, 'not deleted');
    assert.equal(await pbx.pending(), pendingBefore);
    assert.ok(await rowDelete.evaluate((e) => e === document.activeElement), 'focus back on the row’s Delete');

    // Space opens it again; Enter on its Delete confirms.
    await page.keyboard.press('Space');
    await confirm.waitFor({ state: 'visible' });
    assert.ok(await ok.evaluate((e) => e === document.activeElement), 'focus on the dialog’s Delete');
    const res = await submitAndWait(page, () => page.keyboard.press('Enter'));
    assert.ok([302, 303].includes(res.status()), `the delete form post: a redirect, got ${res.status()}`);
    assert.equal((await pbx.api('GET', `/api/v1/conferences/${scratch.id}`)).status, 404, 'deleted from the draft');
    assert.equal(await row.count(), 0, 'the row is gone');
  });

  check('keyboard: Invite, a link with role="button", opens with Space like a button', async () => {
    const room = await pbx.createConference({ name: 'Spacebar', extension: '860' });
    try {
      await open('/conferences');
      const invite = page.locator(`tr[data-conference-id="${room.id}"]`).getByRole('button', { name: 'Invite', exact: true });
      await invite.focus();
      await page.keyboard.press('Space');
      const inviteDialog = page.locator('#invite-dialog');
      await eventually(async () => assert.equal(await inviteDialog.evaluate((d) => d.open), true), {
        timeout: 2000,
        message: 'Space on a focused role="button" activates it (WAI-ARIA button pattern), as Enter does',
      });
      assert.equal(await page.evaluate(() => document.activeElement?.id), 'invite-target');
      await page.keyboard.press('Escape');
    } finally {
      await pbx.api('DELETE', `/api/v1/conferences/${room.id}`);
    }
  });
});
