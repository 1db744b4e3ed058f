// The management console end to end in Chromium, written against the page contract
// (URLs, labels, test ids) of the console: sign-in, the conferences list and form with
// "Save, then Apply changes", a real SIP caller showing up live, invitations from the
// pop-up to a registered SIPp phone, incoming numbers, deletion, wrong inputs, and the
// security rules (no session, CSRF, sign-in throttling).
//
// One PBX and one browser serve the whole file; each test sets up what it needs through
// the REST API so that one failure does not cascade. Screenshots of the main pages go to
// SCREENSHOT_DIR (and FAILED-*.png for whatever page a failing test was on).

import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';

import {
  checker,
  openSignedIn,
  answeringPhone,
  CHROMIUM,
  dial,
  eventually,
  field,
  launchBrowser,
  needs,
  signIn,
  startPbx,
  submitAndWait,
} from './harness.mjs';

const chromiumMissing = needs(CHROMIUM, 'chromium');
const sippMissing = needs('sipp', 'sip-tester');

const USERS = [
  // name, extension, SIP username, SIP password
  ['Alice', '101', 'alice', 'alice-secret'],
  ['Bob', '102', 'bob', 'bob-secret'],
  ['Carol', '103', 'carol', 'carol-secret'],
  ['Dora', '1001', 'dora', 'dora-secret'], // a 4-digit extension a room must not take
];

describe('console', { skip: chromiumMissing }, () => {
  let pbx;
  let b; // launchBrowser() result
  let page; // the main tab, signed in on first use
  let sales; // open room 810, applied: dialled, invited into, target of a number
  let temp; // room 830, applied: deleted

  before(async () => {
    pbx = await startPbx();
    for (const u of USERS) await pbx.createUser(...u);
    sales = await pbx.createConference({ name: 'Sales', extension: '810' });
    temp = await pbx.createConference({ name: 'Temp', extension: '830' });
    await pbx.apply();
    b = await launchBrowser({ baseURL: pbx.url });
    page = b.page;
  });

  after(async () => {
    await b?.close();
    await pbx?.close();
  });

  const check = checker(test, () => ({ b, pbx }), 60_000);

  /** Opens `path` in `p` (the main tab by default), signing in when asked to. */
  const open = (path, p = page) => openSignedIn(p, path);

  // ---- small page helpers (the contract's names) --------------------------------------

  /** A POST answered with redirect-after-POST (the contract says "redirect"). */
  const assertRedirect = (status, what) =>
    assert.ok([302, 303].includes(status), `${what}: a redirect (302/303), got ${status}`);

  const h1 = (p = page) => p.getByRole('heading', { level: 1 });

  /** A control that the contract calls a button but that may be a link, or the reverse. */
  const control = (scope, name) =>
    scope.getByRole('button', { name, exact: true }).or(scope.getByRole('link', { name, exact: true }));

  /** The top bar's Apply changes button (the one holding the pending-count badge). */
  async function applyButton(p = page) {
    const all = p.getByRole('button', { name: /^\s*Apply changes/ });
    const withBadge = all.filter({ has: p.getByTestId('pending-count') });
    return (await withBadge.count()) > 0 ? withBadge.first() : all.first();
  }

  async function pendingCount(p = page) {
    const text = (await p.getByTestId('pending-count').textContent()).trim();
    assert.match(text, /^\d+$/, `pending-count badge holds a number, not ${JSON.stringify(text)}`);
    return Number(text);
  }

  const conferenceRow = (id, p = page) => p.locator(`tr[data-conference-id="${id}"]`);

  async function liveCount(id, p = page) {
    return (await conferenceRow(id, p).getByTestId('live-count').textContent()).trim();
  }

  /** The server-side checks are the contract: no native constraint bubbles in the way. */
  async function skipNativeValidation(p = page) {
    await p.evaluate(() => {
      for (const f of document.forms) f.noValidate = true;
    });
  }

  /** `error` is rendered next to `field` (within 150 px vertically and 600 px across). */
  async function assertNextTo(error, field) {
    const e = await error.boundingBox();
    const f = await field.boundingBox();
    assert.ok(e && f, 'both the field and its error are rendered');
    const dy = Math.max(0, e.y - (f.y + f.height), f.y - (e.y + e.height));
    const dx = Math.max(0, e.x - (f.x + f.width), f.x - (e.x + e.width));
    assert.ok(dy <= 150 && dx <= 600, `error is next to its field (dx=${dx}, dy=${dy})`);
  }

  async function kick(roomId, participantId) {
    await pbx.apiExpect(204, 'POST', `/api/v1/conferences/${roomId}/participants/${participantId}/kick`, {});
  }

  // ---- no session --------------------------------------------------------------------

  check('without a session, pages redirect to /login and the API answers 401', async () => {
    const pages = ['/conferences', '/conferences/new', `/conferences/${sales.id}`,
      `/conferences/${sales.id}/edit`, '/incoming-numbers', '/users', '/trunks', '/settings', '/changes'];
    for (const path of pages) {
      for (const cookie of [undefined, 'confero_session=forged-session-id']) {
        const res = await fetch(`${pbx.url}${path}`, { redirect: 'manual', headers: cookie ? { cookie } : {} });
        assert.equal(res.status, 303, `GET ${path} with ${cookie ?? 'no cookie'}`);
        const to = new URL(res.headers.get('location'), pbx.url);
        assert.equal(to.pathname, '/login', `GET ${path} redirects to the sign-in page`);
        assert.equal(to.searchParams.get('next'), path, `GET ${path}: next=`);
      }
    }
    assert.equal((await fetch(`${pbx.url}/login`)).status, 200, 'the sign-in page itself is public');

    const pendingBefore = await pbx.pending();
    for (const path of ['/api/v1/conferences', `/api/v1/conferences/${sales.id}/participants`, '/api/v1/changes']) {
      assert.equal((await pbx.api('GET', path, undefined, { auth: 'none' })).status, 401, `GET ${path} without credentials`);
    }
    const create = await pbx.api('POST', '/api/v1/conferences', { name: 'Intruder', extension: '866' }, { auth: 'none' });
    assert.equal(create.status, 401, 'POST /api/v1/conferences without credentials');
    // One try each: failed credentials may count towards the sign-in throttle.
    for (const auth of [{ bearer: 'confero_not-a-real-token' }, { basic: ['admin', 'wrong'] }]) {
      const res = await pbx.api('POST', '/api/v1/conferences', { name: 'Intruder', extension: '866' }, { auth });
      assert.equal(res.status, 401, `POST /api/v1/conferences with ${JSON.stringify(auth)}`);
    }
    const forgedCookie = await pbx.api('GET', '/api/v1/conferences', undefined, {
      auth: 'none',
      headers: { cookie: 'confero_session=forged-session-id' },
    });
    assert.equal(forgedCookie.status, 401, 'a forged session cookie is no session');
    assert.equal(await pbx.pending(), pendingBefore, 'nothing saved');
    assert.equal(await pbx.conferenceByExtension('866'), null);
  });

  // ---- sign-in -------------------------------------------------------------------------

  check('sign in: a wrong password is refused, the right one opens the page asked for', async () => {
    const context = await b.newContext();
    try {
      const p = await context.newPage();
      await p.goto('/conferences');
      const url = new URL(p.url());
      assert.equal(url.pathname, '/login');
      assert.equal(url.searchParams.get('next'), '/conferences');
      await p.getByRole('heading', { name: 'Sign in to Confero' }).waitFor();
      await field(p, 'Username').fill('admin');
      await field(p, 'Password').fill('not-the-password');
      await b.shot('01-login', p);

      const wrong = await submitAndWait(p, () => p.getByRole('button', { name: 'Sign in' }).click());
      assert.equal(wrong.status(), 401);
      assert.match(await p.getByRole('alert').textContent(), /Wrong username or password\./);
      await b.shot('01-login-wrong-password', p);

      await field(p, 'Username').fill('admin');
      await field(p, 'Password').fill(pbx.adminPassword);
      const right = await submitAndWait(p, () => p.getByRole('button', { name: 'Sign in' }).click());
      assertRedirect(right.status(), 'sign-in with the right password');
      assert.equal(new URL(p.url()).pathname, '/conferences', 'back to next=');
      assert.equal((await h1(p).textContent()).trim(), 'Conferences');
      assert.equal(await h1(p).count(), 1, 'one h1 per page');
      const cookies = await context.cookies();
      const session = cookies.find((c) => c.name === 'confero_session');
      assert.ok(session, 'a confero_session cookie');
      assert.ok(session.httpOnly, 'the session cookie is HttpOnly');

      const nav = p.getByRole('navigation', { name: 'Main' });
      for (const name of ['Conferences', 'Incoming numbers', 'Users', 'Trunks', 'Settings']) {
        await nav.getByRole('link', { name, exact: true }).waitFor();
      }

      await submitAndWait(p, () => p.getByRole('button', { name: 'Sign out' }).click());
      await p.goto('/conferences');
      assert.equal(new URL(p.url()).pathname, '/login', 'signed out: back to the sign-in page');
    } finally {
      await context.close();
    }
  });

  // ---- conferences: add, pending, apply --------------------------------------------------

  check('a room added with the New conference form is pending until Apply changes', async () => {
    await open('/conferences');
    assert.equal((await h1().textContent()).trim(), 'Conferences');
    const before = await pbx.pending();
    assert.equal(await pendingCount(), before, 'badge = pending changes of the API');

    await control(page, 'Add a conference').click();
    await page.waitForURL((u) => u.pathname === '/conferences/new');
    assert.equal((await h1().textContent()).trim(), 'New conference');
    await field(page, 'Name').fill('Board');
    await field(page, 'Internal extension').fill('800');
    await page.getByText('3 to 5 digits').waitFor();
    await field(page, 'Access code').fill('2468');
    const admin = field(page, 'Administrator extension');
    const options = await admin.locator('option').evaluateAll((os) => os.map((o) => [o.value, o.textContent.trim()]));
    assert.deepEqual(options[0], ['', 'None'], 'first option: None');
    assert.ok(options.some(([v, t]) => v === '101' && t === '101 — Alice'), `an option "101 — Alice": ${JSON.stringify(options)}`);
    await admin.selectOption({ label: '101 — Alice' });
    const wait = field(page, 'Wait for the administrator to start the conference');
    assert.deepEqual(
      (await wait.locator('option').evaluateAll((os) => os.map((o) => [o.value, o.textContent.trim()]))).sort(),
      [['no', 'No'], ['yes', 'Yes']],
    );
    await wait.selectOption('no');
    const saved = await submitAndWait(page, () => page.getByRole('button', { name: 'Save', exact: true }).click());
    assertRedirect(saved.status(), 'Save');
    assert.equal(new URL(page.url()).pathname, '/conferences');
    assert.match(
      await page.getByTestId('flash').textContent(),
      /Conference “Board” saved\. Apply changes to put it in production\. Its access code has 4 digits: codes of 6 or more are much harder to guess\./,
    );

    const board = await pbx.conferenceByExtension('800');
    assert.ok(board, 'saved in the draft');
    assert.deepEqual(
      { name: board.name, access_code: board.access_code, admin_extension: board.admin_extension, wait_for_admin: board.wait_for_admin },
      { name: 'Board', access_code: '2468', admin_extension: '101', wait_for_admin: false },
    );
    const row = conferenceRow(board.id);
    const cells = (await row.locator('th, td').allTextContents()).map((c) => c.trim());
    assert.match(cells[0], /Board/);
    assert.equal(cells[1], '800');
    assert.equal(cells[2].replace(/\s+/g, ' '), 'Yes short', 'access code: Yes, flagged as short (4 digits)');
    assert.match(cells[3], /101/);
    assert.equal(cells[4], 'No', 'wait for the administrator: No');
    assert.equal(await liveCount(board.id), '0');
    await row.getByText('Not applied yet').waitFor();
    await row.getByRole('link', { name: 'Board' }).waitFor();
    for (const name of ['Invite', 'Edit', 'Delete']) await control(row, name).waitFor();

    assert.equal(await pendingCount(), before + 1, 'Apply changes count went up');
    assert.equal(await (await applyButton()).isEnabled(), true);
    assert.match(await page.getByTestId('pending-link').textContent(), new RegExp(`\\b${before + 1} pending changes?\\b`));
    await b.shot('02-conferences');

    await page.getByTestId('pending-link').click();
    await page.waitForURL((u) => u.pathname === '/changes');
    assert.equal((await h1().textContent()).trim(), 'Pending changes');
    await page.getByRole('row').filter({ hasText: 'Board' }).filter({ hasText: 'Added' }).waitFor();
    await control(page.locator('main'), 'Discard changes').waitFor();
    await b.shot('07-changes');

    await submitAndWait(page, async () => (await applyButton()).click());
    await eventually(async () => assert.equal(await pbx.pending(), 0), { timeout: 5000 });
    await open('/conferences');
    assert.equal(await pendingCount(), 0);
    assert.equal(await (await applyButton()).isDisabled(), true, 'nothing to apply: disabled');
    assert.equal(await conferenceRow(board.id).getByText('Not applied yet').count(), 0, 'applied');
  });

  check('wrong inputs show errors next to the field and save nothing', async () => {
    await open('/conferences/new');
    const pendingBefore = await pbx.pending();
    const roomsBefore = (await pbx.conferences()).length;
    assert.equal(await pendingCount(), pendingBefore);
    const name = field(page, 'Name');
    const extension = field(page, 'Internal extension');
    const code = field(page, 'Access code');

    // 1001 is Dora's extension.
    await name.fill('Clash');
    await extension.fill('1001');
    await skipNativeValidation();
    let res = await submitAndWait(page, () => page.getByRole('button', { name: 'Save', exact: true }).click());
    assert.equal(res.status(), 400);
    assert.equal(new URL(page.url()).pathname, '/conferences/new', 'the form again');
    let error = page.locator('[data-error-for="extension"]');
    await error.waitFor();
    assert.notEqual((await error.textContent()).trim(), '', 'the extension error says something');
    await assertNextTo(error, extension);
    assert.equal(await name.inputValue(), 'Clash', 'the values typed are kept');
    assert.equal(await extension.inputValue(), '1001');
    assert.equal(await page.locator('[data-error-for="name"]').filter({ hasText: /\S/ }).count(), 0, 'no error on a good field');
    assert.equal(await pendingCount(), pendingBefore, 'pending count unchanged');
    await b.shot('03-new-conference-error');

    // Letters in the access code.
    await extension.fill('850');
    await code.fill('12ab');
    await skipNativeValidation();
    res = await submitAndWait(page, () => page.getByRole('button', { name: 'Save', exact: true }).click());
    assert.equal(res.status(), 400);
    error = page.locator('[data-error-for="access_code"]');
    await error.waitFor();
    assert.notEqual((await error.textContent()).trim(), '');
    await assertNextTo(error, code);
    assert.equal(await code.inputValue(), '12ab');
    assert.equal(await page.locator('[data-error-for="extension"]').filter({ hasText: /\S/ }).count(), 0, 'extension 850 is fine');
    assert.equal(await pendingCount(), pendingBefore, 'pending count unchanged');

    assert.equal(await pbx.pending(), pendingBefore, 'nothing saved');
    assert.equal((await pbx.conferences()).length, roomsBefore);
    assert.equal(await pbx.conferenceByExtension('850'), null);
  });

  // ---- live room -------------------------------------------------------------------------

  check('a SIP caller dialling the room appears live on the room page and in the list', { skip: sippMissing }, async () => {
    await open(`/conferences/${sales.id}`);
    assert.equal((await h1().textContent()).trim(), 'Sales');
    await page.getByText('Nobody is in this room.').waitFor();
    const list = await b.newPage();
    let caller;
    try {
      await open('/conferences', list);
      assert.equal(await liveCount(sales.id, list), '0');

      caller = await dial(pbx, { target: '810', user: 'bob', password: 'bob-secret' });
      const row = page.locator('tr[data-participant-id]');
      await row.waitFor({ timeout: 15_000 }); // no reload: server-sent events
      await row.getByText('In the room').waitFor({ timeout: 10_000 });
      assert.match(await row.textContent(), /Bob|102/, 'who is calling');
      const [p] = await pbx.participants(sales.id);
      assert.equal(await row.getAttribute('data-participant-id'), String(p.id));
      assert.match(await row.getByTestId('talking').getAttribute('data-talking'), /^(true|false)$/);
      assert.match(await row.textContent(), /PCMU/i, 'codec');
      await row.getByRole('button', { name: 'Mute', exact: true }).waitFor();
      await row.getByRole('button', { name: 'Kick', exact: true }).waitFor();
      assert.equal(await page.getByText('Nobody is in this room.').isVisible(), false);
      await eventually(async () => assert.equal(await liveCount(sales.id, list), '1'), { message: 'live count on the list' });
      await b.shot('04-room-live');

      // Hung up elsewhere: both pages follow.
      await kick(sales.id, p.id);
      await caller.expectSuccess();
      await page.getByText('Nobody is in this room.').waitFor();
      assert.equal(await page.locator('tr[data-participant-id]').count(), 0);
      await eventually(async () => assert.equal(await liveCount(sales.id, list), '0'), { message: 'live count back to 0' });
    } finally {
      await caller?.kill();
      await list.close();
    }
  });

  check('Mute, Unmute and Kick from the room page act on the call', { skip: sippMissing }, async () => {
    await open(`/conferences/${sales.id}`);
    const caller = await dial(pbx, { target: '810', user: 'bob', password: 'bob-secret' });
    try {
      const row = page.locator('tr[data-participant-id]');
      await row.getByText('In the room').waitFor({ timeout: 15_000 });
      const pid = await row.getAttribute('data-participant-id');
      const muted = async () => (await pbx.participants(sales.id)).find((p) => String(p.id) === pid)?.muted;

      await row.getByRole('button', { name: 'Mute', exact: true }).click();
      await row.getByRole('button', { name: 'Unmute', exact: true }).waitFor();
      await eventually(async () => assert.equal(await muted(), true));
      await row.getByRole('button', { name: 'Unmute', exact: true }).click();
      await row.getByRole('button', { name: 'Mute', exact: true }).waitFor();
      await eventually(async () => assert.equal(await muted(), false));

      await row.getByRole('button', { name: 'Kick', exact: true }).click();
      // A confirmation is allowed but not required by the contract.
      const confirm = page.getByRole('dialog').getByRole('button', { name: 'Kick', exact: true });
      if (await confirm.waitFor({ timeout: 1000 }).then(() => true, () => false)) await confirm.click();
      await caller.expectSuccess(); // it got its BYE
      await page.getByText('Nobody is in this room.').waitFor();
      assert.deepEqual(await pbx.participants(sales.id), []);
    } finally {
      await caller.kill();
    }
  });

  // ---- invitations -------------------------------------------------------------------------

  check('invite from the pop-up: a registered phone answers, an unknown extension fails', { skip: sippMissing }, async () => {
    const phone = await answeringPhone(pbx, { user: 'carol', password: 'carol-secret' });
    try {
      await open('/conferences');
      await control(conferenceRow(sales.id), 'Invite').click();
      let dialog = page.getByRole('dialog');
      await dialog.waitFor();
      assert.match(await dialog.textContent(), /Please enter the phone number of the person you want to invite/);
      await field(dialog, 'Phone number or extension').fill('103');
      await dialog.getByRole('button', { name: 'Invite', exact: true }).click();
      let status = dialog.getByTestId('invite-status');
      const seen = new Set();
      await eventually(async () => {
        const state = await status.getAttribute('data-state');
        seen.add(state);
        assert.equal(state, 'answered');
      }, { timeout: 15_000, interval: 50, message: 'the invitation is answered' });
      for (const s of seen) assert.ok([null, 'calling', 'ringing', 'answered'].includes(s), `progress went through ${[...seen]}`);
      assert.notEqual((await status.textContent()).trim(), '', 'progress text');
      await b.shot('05-invite-dialog');
      await eventually(async () => assert.equal(await liveCount(sales.id), '1'), { message: 'the invited phone is counted' });
      const [carol] = await pbx.participants(sales.id);
      assert.equal(carol.caller, '103');
      await control(dialog, 'Close').click();
      await dialog.waitFor({ state: 'hidden' });

      // From the room page: an extension nobody has.
      await open(`/conferences/${sales.id}`);
      await page.locator(`tr[data-participant-id="${carol.id}"]`).waitFor();
      await control(page, 'Invite').click();
      dialog = page.getByRole('dialog');
      await field(dialog, 'Phone number or extension').fill('999');
      await dialog.getByRole('button', { name: 'Invite', exact: true }).click();
      status = dialog.getByTestId('invite-status');
      await eventually(async () => assert.equal(await status.getAttribute('data-state'), 'failed'),
        { timeout: 10_000, message: 'the invitation to 999 fails' });
      assert.match(await status.textContent(), /\b404\b|no such extension|not found/i, 'the SIP status and reason');
      await control(dialog, 'Close').click();

      await kick(sales.id, carol.id);
      await phone.expectSuccess();
    } finally {
      await phone.kill();
    }
  });

  // ---- incoming numbers ----------------------------------------------------------------------

  check('an incoming number is pointed at the room with Destination type Conference', async () => {
    const number = await pbx.apiExpect(201, 'POST', '/api/v1/incoming-numbers', { number: '+3225550100' });
    await pbx.apply(); // in production: the edit below is one "Changed" entry
    await open('/incoming-numbers');
    assert.equal((await h1().textContent()).trim(), 'Incoming numbers');
    await control(page, 'Add a number').waitFor();
    const pendingBefore = await pbx.pending();
    const row = page.locator(`tr[data-number-id="${number.id}"]`);
    assert.match(await row.textContent(), /\+3225550100/);
    await control(row, 'Edit').click();
    await page.waitForURL((u) => u.pathname !== '/incoming-numbers');
    assert.equal((await h1().textContent()).trim(), 'Edit incoming number');
    assert.equal(await field(page, 'Number').inputValue(), '+3225550100');

    const type = field(page, 'Destination type for voice call');
    assert.deepEqual(
      await type.locator('option').evaluateAll((os) => os.map((o) => [o.value, o.textContent.trim()])),
      [['not_configured', 'Not configured'], ['extension', 'Extension'], ['conference', 'Conference'], ['hang_up', 'Hang up']],
    );
    assert.equal(await type.inputValue(), 'not_configured');
    await type.selectOption('conference');
    const room = field(page, 'Conference');
    await room.waitFor(); // shown once Conference is chosen
    assert.equal(await field(page, 'Extension').isVisible(), false, 'Extension hidden');
    const option = room.locator(`option[value="${sales.id}"]`);
    assert.equal((await option.textContent()).trim(), 'Sales (810)');
    await room.selectOption(String(sales.id));
    await b.shot('06-incoming-number-edit');

    const saved = await submitAndWait(page, () => page.getByRole('button', { name: 'Save', exact: true }).click());
    assertRedirect(saved.status(), 'Save');
    const stored = await pbx.apiExpect(200, 'GET', `/api/v1/incoming-numbers/${number.id}`);
    assert.deepEqual(stored.destination, { type: 'conference', conference_id: sales.id });
    assert.equal(await pbx.pending(), pendingBefore + 1);
    await open('/incoming-numbers');
    assert.match(await page.locator(`tr[data-number-id="${number.id}"]`).textContent(), /Sales/);
    assert.equal(await pendingCount(), pendingBefore + 1);
  });

  // ---- Connect Odoo ---------------------------------------------------------------------------

  check('Connect Odoo lists the values for Odoo from the menu, with each user', async () => {
    await open('/conferences');
    await page.getByRole('navigation', { name: 'Main' }).getByRole('link', { name: 'Connect Odoo' }).click();
    await page.waitForURL((u) => u.pathname === '/connect-odoo');
    assert.equal((await h1().textContent()).trim(), 'Connect Odoo');
    const host = new URL(pbx.url).hostname;
    const port = new URL(pbx.url).port;
    assert.equal((await page.getByTestId('odoo-domain').textContent()).trim(), host, 'the name this console was opened with');
    assert.equal((await page.getByTestId('odoo-websocket').textContent()).trim(), `ws://${host}:${port}/ws`);
    assert.equal((await page.getByTestId('odoo-environment').textContent()).trim(), 'Production');
    // This PBX has no HTTPS listener: the page says an https:// Odoo cannot use ws://.
    assert.ok(await page.getByTestId('odoo-no-tls').isVisible());
    for (const [name, , username] of USERS) {
      const row = page.locator(`tr[data-user="${username}"]`);
      assert.match(await row.textContent(), new RegExp(name));
      assert.match(await row.textContent(), /No$|No\s*$/m, `${username} has no browser registered`);
    }
    await b.shot('08-connect-odoo');
  });

  // ---- deletion -------------------------------------------------------------------------------

  check('deleting a room asks for confirmation, then Apply changes takes it out', async () => {
    await open('/conferences');
    const pendingBefore = await pbx.pending();
    assert.equal(await pendingCount(), pendingBefore);
    await control(conferenceRow(temp.id), 'Delete').click();
    const dialog = page.getByRole('dialog');
    await dialog.waitFor();
    await dialog.getByRole('button', { name: 'Delete', exact: true }).click();
    await eventually(async () => assert.equal((await pbx.api('GET', `/api/v1/conferences/${temp.id}`)).status, 404),
      { timeout: 5000, message: 'deleted from the draft' });
    assert.equal(await pbx.pending(), pendingBefore + 1);
    await dialog.waitFor({ state: 'hidden' });
    await open('/conferences');
    assert.equal(await pendingCount(), pendingBefore + 1);

    await submitAndWait(page, async () => (await applyButton()).click());
    await eventually(async () => assert.equal(await pbx.pending(), 0), { timeout: 5000, message: 'applied' });
    await open('/conferences');
    assert.equal(await conferenceRow(temp.id).count(), 0, 'the row is gone');
    assert.equal(await pendingCount(), 0);
    const production = await pbx.conferences();
    assert.ok(!production.some((c) => c.extension === '830'), 'gone after apply');
  });

  // ---- CSRF ------------------------------------------------------------------------------------

  check('a form POST without _csrf gets 403 and changes nothing', async () => {
    await open('/conferences/new');
    const form = page.locator('form').filter({ has: field(page, 'Name') });
    await field(page, 'Name').fill('Forged');
    await field(page, 'Internal extension').fill('860');
    const { action, method, entries } = await form.evaluate((f) => ({
      action: f.action,
      method: f.method,
      entries: [...new FormData(f)].filter(([, v]) => typeof v === 'string'),
    }));
    assert.equal(method.toLowerCase(), 'post');
    const token = entries.find(([k]) => k === '_csrf')?.[1];
    assert.ok(token, 'the form carries a hidden _csrf field');
    const withoutToken = Object.fromEntries(entries.filter(([k]) => k !== '_csrf'));
    const pendingBefore = await pbx.pending();

    // The same cookies as the page (page.request shares the browser context's jar).
    const post = (form) => page.request.post(action, { form, maxRedirects: 0, failOnStatusCode: false });
    assert.equal((await post(withoutToken)).status(), 403, 'no _csrf');
    assert.equal((await post({ ...withoutToken, _csrf: 'not-the-token' })).status(), 403, 'wrong _csrf');
    assert.equal(await pbx.pending(), pendingBefore, 'nothing saved');
    assert.equal(await pbx.conferenceByExtension('860'), null);

    // Apply changes without _csrf: refused too, the draft stays a draft.
    await pbx.apiExpect(201, 'POST', '/api/v1/users', { name: 'Erin', extension: '105', sip_username: 'erin', sip_password: 'erin-secret' });
    await page.reload();
    const applyAction = await (await applyButton()).evaluate((btn) => btn.form?.action);
    assert.ok(applyAction, 'Apply changes is a form POST');
    const pendingNow = await pbx.pending();
    assert.ok(pendingNow > 0);
    assert.equal((await page.request.post(applyAction, { form: {}, maxRedirects: 0, failOnStatusCode: false })).status(), 403);
    assert.equal(await pbx.pending(), pendingNow, 'not applied');

    // Console JavaScript calling the API with the session cookie must send X-CSRF-Token.
    const meta = await page.locator('meta[name="csrf-token"]').getAttribute('content');
    assert.ok(meta, '<meta name="csrf-token">');
    const viaCookie = await page.request.post('/api/v1/conferences', {
      data: { name: 'Forged', extension: '861' },
      failOnStatusCode: false,
    });
    assert.ok([401, 403].includes(viaCookie.status()), `cookie without X-CSRF-Token: ${viaCookie.status()}`);
    assert.equal(await pbx.conferenceByExtension('861'), null);

    // Controls: with the token both succeed (so the 403s above were the CSRF check).
    const good = await post({ ...withoutToken, _csrf: token });
    assertRedirect(good.status(), `Save with _csrf (${await good.text()})`);
    assert.ok(await pbx.conferenceByExtension('860'), 'saved with the token');
    const goodApi = await page.request.post('/api/v1/conferences', {
      data: { name: 'Scripted', extension: '862' },
      headers: { 'X-CSRF-Token': meta },
      failOnStatusCode: false,
    });
    assert.equal(goodApi.status(), 201, `API with cookie and X-CSRF-Token: ${await goodApi.text()}`);
  });

  // ---- sign-in throttling (its own PBX: the lock-out must not touch the other tests) ---------

  check('repeated wrong sign-ins are refused with 429', async () => {
    const other = await startPbx();
    const context = await b.newContext({ baseURL: other.url });
    try {
      const p = await context.newPage();
      const statuses = [];
      // Wrong passwords until a refusal whose wait (Retry-After) outlasts the next sign-in
      // for sure: a wait that ran out is waited for, and the next failure doubles it (1, 2,
      // then 4 s), so the check below does not depend on how fast the browser is.
      let retryAfter = 0;
      for (let i = 0; i < 20 && !(statuses.at(-1) === 429 && retryAfter >= 3); i++) {
        if (statuses.at(-1) === 429) await p.waitForTimeout(retryAfter * 1000);
        await p.goto('/login');
        await field(p, 'Username').fill('admin');
        await field(p, 'Password').fill(`wrong-${i}`);
        const r = await submitAndWait(p, () => p.getByRole('button', { name: 'Sign in' }).click());
        statuses.push(r.status());
        retryAfter = Number((await r.allHeaders())['retry-after'] ?? 0);
      }
      assert.equal(statuses[0], 401, `statuses: ${statuses}`);
      const first = statuses.indexOf(429);
      assert.ok(first > 0 && first <= 10, `throttled within 10 failures: ${statuses}`);
      assert.equal(statuses.at(-1), 429, `statuses: ${statuses}`);
      assert.ok(retryAfter >= 3, `the wait grows with each failure: ${retryAfter} s`);
      assert.match(await p.getByRole('alert').textContent(), /Too many failed sign-ins/);
      // Still locked out, even with the right password.
      assert.equal(await signIn(p, { password: other.adminPassword }), 429, 'the right password is refused while throttled');
      await p.goto('/conferences');
      assert.equal(new URL(p.url()).pathname, '/login', 'no session');
    } finally {
      await context.close();
      await other.close();
    }
  });
});
