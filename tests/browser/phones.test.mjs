// Browser phones in Chromium: SIP.js 0.21.2 (same API as Odoo 17's SIP.js 0.20) and
// JsSIP 3.13 speaking SIP over WebSocket (RFC 7118) to the PBX, on `ws://…/ws` of the HTTP
// listener and `wss://…/ws` of the HTTPS one (a self-signed certificate made here).
// Signalling only: WebRTC media is not there yet, so calls to a browser are rejected by
// the page (486), which is enough to prove the INVITE travels down the browser's socket
// and that SIP.js accepts its Request-URI.
//
// The libraries load from node_modules through servePhoneLibs() (no bundler): SIP.js as
// ES modules, JsSIP (CommonJS only) through a small in-page require. SIP.js 0.21.2's
// lib/version.js still says 0.21.1 (a packaging slip upstream): the version checked is
// package.json's.

import assert from 'node:assert/strict';
import fs from 'node:fs';
import path from 'node:path';
import { after, before, describe, test } from 'node:test';

import {
  BROWSER_DIR,
  checker,
  CHROMIUM,
  dial,
  eventually,
  launchBrowser,
  needs,
  openPhonePage,
  selfSignedCert,
  servePhoneLibs,
  startPbx,
  userMaker,
} from './harness.mjs';

const chromiumMissing = needs(CHROMIUM, 'chromium');
const sippMissing = needs('sipp', 'sip-tester');

/** The SIP domain Odoo's "PBX Server IP" holds: the AOR's and Request-URIs' host. */
const DOMAIN = '127.0.0.1';

const installed = (name) =>
  JSON.parse(fs.readFileSync(path.join(BROWSER_DIR, 'node_modules', name, 'package.json'), 'utf8')).version;

// ---- the phones, in the page ------------------------------------------------------------

/**
 * Starts SIP.js in `page` configured as Odoo 17's `sipJsUserAgentConfig`
 * (voip/static/src/core/user_agent_service.js: hackIpInContact, transportOptions.server,
 * authorizationUsername/Password, uri sip:USER@DOMAIN, 1 s ICE gathering, no keep-alives)
 * and registers as Odoo's Registerer does (`expires: 3600`). Incoming INVITEs are recorded
 * in `window.phone.invites` and rejected with `rejectWith`. Resolves with the final
 * registerer state and what the page saw.
 */
async function sipJsRegister(page, { server, user, password, rejectWith = 486 }) {
  await page.evaluate(
    async ({ server, user, password, domain, rejectWith }) => {
      const SIP = window.SIP;
      const phone = { states: [], invites: [], rejects: [], disconnects: [], errors: [] };
      window.phone = phone;
      const ua = new SIP.UserAgent({
        authorizationPassword: password,
        authorizationUsername: user,
        delegate: {
          onDisconnect: (error) => phone.disconnects.push(error ? String(error.message ?? error) : 'clean'),
          onInvite: (invitation) => {
            const req = invitation.request;
            phone.invites.push({
              ruri: String(req.ruri),
              ruriUser: req.ruri.user,
              from: String(req.from.uri),
              fromUser: invitation.remoteIdentity.uri.user,
              fromDisplayName: invitation.remoteIdentity.displayName,
              via: req.getHeader('via'),
            });
            invitation.reject({ statusCode: rejectWith }).catch((e) => phone.errors.push(`reject: ${e}`));
          },
        },
        hackIpInContact: true,
        logBuiltinEnabled: true,
        logLevel: 'error',
        sessionDescriptionHandlerFactory: SIP.Web.defaultSessionDescriptionHandlerFactory(),
        sessionDescriptionHandlerFactoryOptions: { iceGatheringTimeout: 1000 },
        transportOptions: { server, traceSip: false },
        uri: SIP.UserAgent.makeURI(`sip:${user}@${domain}`),
        userAgentString: `Odoo 17.0 SIP.js/${SIP.version}`,
      });
      phone.ua = ua;
      phone.contact = String(ua.contact.uri);
      phone.contactUser = ua.contact.uri.user;
      await ua.start();
      const registerer = new SIP.Registerer(ua, { expires: 3600 });
      registerer.stateChange.addListener((s) => phone.states.push(s));
      phone.registerer = registerer;
      registerer
        .register({ requestDelegate: { onReject: (r) => phone.rejects.push(r.message.statusCode) } })
        .catch((e) => phone.errors.push(`register: ${e}`));
    },
    { server, user, password, domain: DOMAIN, rejectWith },
  );
  await waitInPage(
    page,
    () => window.phone.registerer.state === 'Registered' || window.phone.rejects.length || window.phone.errors.length,
    'SIP.js registration ended',
  );
  return phoneState(page);
}

/** Waits up to 10 s for `predicate` in the page; on timeout the error carries the page's console. */
async function waitInPage(page, predicate, what) {
  try {
    // Polled on a timer rather than on animation frames, which a page not in front may not get.
    await page.waitForFunction(predicate, null, { timeout: 10_000, polling: 100 });
  } catch (err) {
    const state = await page.evaluate(() => JSON.stringify(window.phone, (k, v) => (['ua', 'registerer'].includes(k) ? undefined : v))).catch((e) => String(e));
    err.message = `${what}: ${err.message}\n--- window.phone ---\n${state}\n--- page console ---\n${(page.consoleLines ?? []).slice(-30).join('\n')}`;
    throw err;
  }
}

/** What the page's phone recorded (JSON-safe). */
function phoneState(page) {
  return page.evaluate(() => {
    const { ua, registerer, ...rest } = window.phone;
    return { ...rest, state: registerer?.state ?? null, transportState: ua?.transport?.state ?? null };
  });
}

/** Starts JsSIP in `page` with register: true, Expires 3600; resolves with what it saw. */
async function jsSipRegister(page, { server, user, password }) {
  await page.evaluate(
    ({ server, user, password, domain }) => {
      const JsSIP = window.JsSIP;
      const phone = { events: [], failed: null, contact: null };
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
      ua.on('connected', () => phone.events.push('connected'));
      ua.on('disconnected', () => phone.events.push('disconnected'));
      ua.on('registered', (e) => {
        phone.events.push('registered');
        phone.contact = e.response.getHeader('contact');
      });
      ua.on('registrationFailed', (e) => {
        phone.events.push('registrationFailed');
        phone.failed = `${e.cause} ${e.response?.status_code ?? ''}`;
      });
      ua.start();
    },
    { server, user, password, domain: DOMAIN },
  );
  await waitInPage(page, () => window.phone.events.some((e) => e === 'registered' || e === 'registrationFailed'), 'JsSIP registration ended');
  return page.evaluate(() => {
    const { ua, ...rest } = window.phone;
    return { ...rest, registered: ua.isRegistered(), contactUri: ua.contact.toString() };
  });
}

// ---- the PBX's view -----------------------------------------------------------------------

/** The bindings of SIP user `user` (the registrar's AOR is the SIP username or its URI). */
async function bindingsOf(pbx, user) {
  const all = await pbx.registrations();
  return all.filter((r) => r.user === user || new RegExp(`^sips?:${user}@`).test(String(r.user)));
}

async function registeredOnce(pbx, user) {
  return eventually(async () => {
    const mine = await bindingsOf(pbx, user);
    assert.equal(mine.length, 1, `one binding for ${user}: ${JSON.stringify(await pbx.registrations())}`);
    return mine[0];
  }, { timeout: 5_000, message: `${user} in GET /api/v1/registrations` });
}

describe('browser phones over SIP WebSocket', { timeout: 120_000, skip: chromiumMissing }, () => {
  let pbx;
  let b;
  let libs;
  const check = checker(test, () => ({ b, pbx }), 30_000);
  /** A fresh user (applied), so that no test depends on another. */
  const newUser = userMaker(() => pbx, 300, { apply: true });

  before(async () => {
    const { cert, key } = selfSignedCert();
    [pbx, libs] = await Promise.all([
      startPbx({ extraArgs: ['--https-listen', '127.0.0.1:0', '--tls-cert', cert, '--tls-key', key] }),
      servePhoneLibs(),
    ]);
    assert.ok(pbx.https, `the ready line names the HTTPS listener: ${pbx.logsMatching(/confero ready/)}`);
    b = await launchBrowser({ ignoreCertificateErrors: true });
  });

  after(async () => {
    await b?.close();
    await libs?.close();
    await pbx?.close();
  });

  check('the pinned phone libraries are the ones installed', async () => {
    assert.equal(installed('sip.js'), '0.21.2');
    assert.match(installed('jssip'), /^3\.13\.\d+$/);
  });

  check('SIP.js configured as Odoo 17 registers over ws:// (transport WS, Contact transport=ws)', async () => {
    const { username, password } = await newUser('odoo');
    const page = await openPhonePage(b, libs, 'sip.js');
    try {
      const seen = await sipJsRegister(page, { server: pbx.wsUrl, user: username, password });
      assert.equal(seen.state, 'Registered', JSON.stringify(seen));
      assert.deepEqual(seen.rejects, []);
      // hackIpInContact: a made-up 192.0.2.x host in the Contact, as Odoo's.
      assert.match(seen.contact, /^sip:[^@]+@192\.0\.2\.\d+;transport=ws$/, seen.contact);
      const binding = await registeredOnce(pbx, username);
      assert.equal(binding.transport, 'WS', JSON.stringify(binding));
      assert.match(binding.contact, /transport=ws/i, JSON.stringify(binding));
      assert.ok(binding.contact.includes(seen.contactUser), `the binding is the page's Contact ${seen.contact}: ${JSON.stringify(binding)}`);
      assert.ok(binding.expires_in > 3000 && binding.expires_in <= 3600, `Expires 3600 granted: ${JSON.stringify(binding)}`);
      assert.match(String(binding.user_agent), /^Odoo 17\.0 SIP\.js\//);
    } finally {
      await page.close();
    }
  });

  check('SIP.js registers over wss:// with a self-signed certificate (transport WSS)', async () => {
    const { username, password } = await newUser('secure');
    const page = await openPhonePage(b, libs, 'sip.js');
    try {
      const seen = await sipJsRegister(page, { server: pbx.wssUrl, user: username, password });
      assert.equal(seen.state, 'Registered', JSON.stringify(seen));
      const binding = await registeredOnce(pbx, username);
      assert.equal(binding.transport, 'WSS', JSON.stringify(binding));
    } finally {
      await page.close();
    }
  });

  check('JsSIP 3.13 registers over ws://', async () => {
    const { username, password } = await newUser('jssip');
    const page = await openPhonePage(b, libs, 'jssip');
    try {
      const seen = await jsSipRegister(page, { server: pbx.wsUrl, user: username, password });
      assert.ok(seen.registered, JSON.stringify(seen));
      assert.match(seen.contact, /expires=3600/, `the 200 OK echoes the Contact with ;expires=: ${seen.contact}`);
      const binding = await registeredOnce(pbx, username);
      assert.equal(binding.transport, 'WS', JSON.stringify(binding));
      assert.match(binding.contact, /transport=ws/i, JSON.stringify(binding));
      assert.match(String(binding.user_agent), /^JsSIP 3\.13/);
    } finally {
      await page.close();
    }
  });

  check('a desk phone calls the SIP.js user: the INVITE comes down its WebSocket, the page answers 486', { skip: sippMissing }, async (t) => {
    const browserUser = await newUser('callee');
    const deskUser = await newUser('desk');
    const page = await openPhonePage(b, libs, 'sip.js');
    let caller;
    try {
      const seen = await sipJsRegister(page, { server: pbx.wsUrl, user: browserUser.username, password: browserUser.password, rejectWith: 486 });
      assert.equal(seen.state, 'Registered', JSON.stringify(seen));
      await registeredOnce(pbx, browserUser.username);
      caller = await dial(pbx, {
        target: browserUser.extension,
        user: deskUser.username,
        password: deskUser.password,
        part: 'caller_gets_final.part',
        vars: { FINAL: 486, BACK: 4 },
        timeoutMs: 15_000,
      });
      const invites = await eventually(async () => {
        const { invites } = await phoneState(page);
        assert.equal(invites.length, 1, 'one INVITE reached SIP.js (its onInvite fired)');
        return invites;
      }, { timeout: 10_000, message: 'INVITE in the page' });
      t.diagnostic(`INVITE in the page: ${JSON.stringify(invites[0])}`);
      // SIP.js answers 404 itself when the Request-URI user is neither its AOR nor its Contact user.
      assert.ok(
        [browserUser.username, seen.contactUser].includes(invites[0].ruriUser),
        `Request-URI ${invites[0].ruri} names the AOR ${browserUser.username} or the Contact user ${seen.contactUser}`,
      );
      assert.match(invites[0].via, /^SIP\/2\.0\/WSS? /, `the top Via is the PBX's WebSocket hop: ${invites[0].via}`);
      // Odoo reads the caller's number from the From user part.
      assert.equal(invites[0].fromUser, deskUser.extension, `From names the caller's extension: ${invites[0].from}`);
      await caller.expectSuccess();
      const after = await phoneState(page);
      assert.deepEqual(after.errors, []);
    } finally {
      await caller?.kill();
      await page.close();
    }
  });

  check('closing the page removes its registration', async () => {
    const { username, password } = await newUser('closer');
    const page = await openPhonePage(b, libs, 'sip.js');
    let closed = false;
    try {
      const seen = await sipJsRegister(page, { server: pbx.wsUrl, user: username, password });
      assert.equal(seen.state, 'Registered', JSON.stringify(seen));
      await registeredOnce(pbx, username);
      // The tab goes away without unregistering (as Odoo's page does when closed).
      await page.close({ runBeforeUnload: false });
      closed = true;
      await eventually(async () => assert.deepEqual(await bindingsOf(pbx, username), []), {
        timeout: 5_000,
        message: 'the binding removed when its WebSocket closed',
      });
    } finally {
      if (!closed) await page.close();
    }
  });

  check('garbage WebSocket frames and a 70 KB message leave the PBX up; SIP.js registers afterwards', async (t) => {
    const page = await openPhonePage(b, libs, 'sip.js');
    try {
      const raw = await page.evaluate(async (url) => {
        const ws = new WebSocket(url, 'sip');
        const got = [];
        let closedWith = null;
        ws.onmessage = (e) => got.push(typeof e.data === 'string' ? e.data : `[binary ${e.data.size ?? e.data.byteLength}]`);
        const closed = new Promise((resolve) => {
          ws.onclose = (e) => {
            closedWith = { code: e.code, reason: e.reason, wasClean: e.wasClean };
            resolve();
          };
        });
        await new Promise((resolve, reject) => {
          ws.onopen = resolve;
          ws.onerror = () => reject(new Error('WebSocket with subprotocol sip did not open'));
        });
        const protocol = ws.protocol;
        const wait = (ms) => new Promise((r) => setTimeout(r, ms));
        ws.send('this is not SIP at all');
        ws.send('INVITE\r\n\r\n');
        ws.send(new Uint8Array([0, 1, 2, 255, 254, 13, 10, 13, 10]));
        ws.send('REGISTER sip:127.0.0.1 SIP/2.0\r\nVia: broken\r\n\r\n');
        // Still serving: a well-formed OPTIONS on the same socket is answered.
        ws.send(
          [
            'OPTIONS sip:127.0.0.1 SIP/2.0',
            'Via: SIP/2.0/WS garbage.invalid;branch=z9hG4bKgarbage1',
            'Max-Forwards: 70',
            'To: <sip:127.0.0.1>',
            'From: <sip:nobody@127.0.0.1>;tag=g1',
            'Call-ID: garbage-options-1',
            'CSeq: 1 OPTIONS',
            'Content-Length: 0',
            '',
            '',
          ].join('\r\n'),
        );
        for (let i = 0; i < 40 && !got.some((m) => m.startsWith('SIP/2.0 ')); i++) await wait(50);
        const beforeBig = [...got];
        // 70 KB: over the PBX's 64 KiB SIP message limit.
        ws.send(`MESSAGE sip:127.0.0.1 SIP/2.0\r\n${'X-Filler: '.padEnd(1000, 'x')}\r\n`.repeat(70));
        await Promise.race([closed, wait(1500)]);
        if (ws.readyState === WebSocket.OPEN) ws.close(1000);
        await Promise.race([closed, wait(1000)]);
        return { protocol, beforeBig, closedWith };
      }, pbx.wsUrl);
      t.diagnostic(`raw socket: ${raw.beforeBig.length} message(s) before the 70 KB one; closed with ${JSON.stringify(raw.closedWith)}`);
      assert.equal(raw.protocol, 'sip', 'the server picked the sip subprotocol');
      assert.ok(
        raw.beforeBig.some((m) => /^SIP\/2\.0 200 /.test(m) && m.includes('garbage-options-1')),
        `the OPTIONS after the garbage was answered 200 on the same socket: ${JSON.stringify(raw)}`,
      );
      assert.ok(pbx.running, `the PBX is still running:\n${pbx.logTail(20)}`);
      const health = await pbx.api('GET', '/healthz', undefined, { auth: 'none' });
      assert.equal(health.status, 200);

      const { username, password } = await newUser('after');
      const seen = await sipJsRegister(page, { server: pbx.wsUrl, user: username, password });
      assert.equal(seen.state, 'Registered', JSON.stringify(seen));
      assert.equal((await registeredOnce(pbx, username)).transport, 'WS');
    } finally {
      await page.close();
    }
  });
});
