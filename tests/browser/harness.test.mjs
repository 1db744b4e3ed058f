// The harness itself, end to end, on what the PBX already has (REST API, SIP, /healthz):
// when these pass and console.test.mjs fails, the console is at fault, not the plumbing.

import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';

import {
  answeringPhone,
  CHROMIUM,
  dial,
  eventually,
  launchBrowser,
  needs,
  startPbx,
} from './harness.mjs';

describe('harness', { timeout: 120_000 }, () => {
  let pbx;

  before(async () => {
    pbx = await startPbx();
  });

  after(async () => {
    await pbx?.close();
  });

  test('the PBX runs on free loopback ports and answers the API', async () => {
    assert.match(pbx.http, /^127\.0\.0\.1:\d+$/);
    assert.match(pbx.sip, /^127\.0\.0\.1:\d+$/);
    const health = await pbx.api('GET', '/healthz', undefined, { auth: 'none' });
    assert.equal(health.status, 200);
    assert.match(health.text, /ok/);
    assert.equal((await pbx.api('GET', '/api/v1/conferences', undefined, { auth: 'none' })).status, 401);
    const viaBasic = await pbx.api('GET', '/api/v1/changes', undefined, { auth: 'basic' });
    assert.equal(viaBasic.status, 200, viaBasic.text);
    await pbx.createUser('Bob', '102', 'bob', 'bob-secret');
    await pbx.createUser('Carol', '103', 'carol', 'carol-secret');
    const room = await pbx.createConference({ name: 'Sales', extension: '810' });
    assert.equal(room.name, 'Sales');
    assert.equal(await pbx.pending(), 3);
    await pbx.apply();
    assert.equal(await pbx.pending(), 0);
  });

  test('a SIPp caller with digest auth shows up among the room participants', { skip: needs('sipp', 'sip-tester') }, async () => {
    const room = await pbx.conferenceByExtension('810');
    const caller = await dial(pbx, { target: '810', user: 'bob', password: 'bob-secret' });
    try {
      const [p] = await eventually(async () => {
        const list = await pbx.participants(room.id);
        assert.ok(list.some((p) => p.state === 'in_room'), JSON.stringify(list));
        return list;
      }, { timeout: 10_000, message: 'caller in the room' });
      assert.equal(p.caller, '102');
      await pbx.apiExpect(204, 'POST', `/api/v1/conferences/${room.id}/participants/${p.id}/kick`, {});
      await caller.expectSuccess();
      await eventually(async () => assert.deepEqual(await pbx.participants(room.id), []));
    } finally {
      await caller.kill();
    }
  });

  test('a registered SIPp phone answers an invitation', { skip: needs('sipp', 'sip-tester') }, async () => {
    const room = await pbx.conferenceByExtension('810');
    const phone = await answeringPhone(pbx, { user: 'carol', password: 'carol-secret' });
    try {
      const inv = await pbx.apiExpect(202, 'POST', `/api/v1/conferences/${room.id}/invite`, { target: '103' });
      const done = await eventually(async () => {
        const v = await pbx.apiExpect(200, 'GET', `/api/v1/invitations/${inv.id}`);
        assert.equal(v.state, 'answered', JSON.stringify(v));
        return v;
      }, { timeout: 10_000 });
      await pbx.apiExpect(204, 'POST', `/api/v1/conferences/${room.id}/participants/${done.participant_id}/kick`, {});
      await phone.expectSuccess();
    } finally {
      await phone.kill();
    }
  });

  test('a restart (SIGTERM) keeps the data dir and the ports', async () => {
    const before = { http: pbx.http, sip: pbx.sip };
    await pbx.restart();
    assert.deepEqual({ http: pbx.http, sip: pbx.sip }, before);
    const rooms = await pbx.conferences();
    assert.deepEqual(rooms.map((r) => r.extension), ['810']);
  });

  test('Chromium starts headless and takes a screenshot', { skip: needs(CHROMIUM, 'chromium') }, async () => {
    const b = await launchBrowser({ baseURL: pbx.url });
    try {
      const response = await b.page.goto('/healthz');
      assert.equal(response.status(), 200);
      assert.match(await b.page.textContent('body'), /ok/);
      const file = await b.shot('00-healthz');
      const { statSync } = await import('node:fs');
      assert.ok(statSync(file).size > 500, 'a real PNG');
    } finally {
      await b.close();
    }
  });
});
