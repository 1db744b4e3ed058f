// Harness for Confero's browser end-to-end tests (node --test, playwright-core, Debian's
// Chromium): runs the real `confero` binary on free loopback ports with a throw-away data
// dir, talks to its REST API, drives third-party SIP peers (SIPp) and a headless Chromium.
//
// Everything listens on and talks to 127.0.0.1 only, on ports found by binding port 0;
// every child process is reaped when the test process ends.
//
// Environment:
//   CONFERO_BIN      the binary (default: <repo>/target/debug/confero)
//   CHROMIUM         the browser (default: /usr/bin/chromium)
//   SCREENSHOT_DIR   where PNGs go (default: <repo>/target/browser-screenshots)
//   KEEP_TMP=1       keep data dirs, scenarios and SIPp logs (their folder is printed)
//   CI               set: a missing sipp/chromium fails the tests instead of skipping them
//
// Browser phones (SIP.js, JsSIP) load from node_modules through servePhoneLibs(), a static
// server on a loopback port: no bundler, nothing fetched from outside.

import assert from 'node:assert/strict';
import { spawn, spawnSync } from 'node:child_process';
import { once } from 'node:events';
import fs from 'node:fs';
import http from 'node:http';
import net from 'node:net';
import dgram from 'node:dgram';
import os from 'node:os';
import path from 'node:path';
import readline from 'node:readline';
import { fileURLToPath } from 'node:url';
import { setTimeout as sleep } from 'node:timers/promises';

export { sleep };

export const BROWSER_DIR = path.dirname(fileURLToPath(import.meta.url));
export const ROOT = path.resolve(BROWSER_DIR, '../..');
export const SIPP_DIR = path.join(ROOT, 'tests/sipp');
export const CONFERO_BIN = process.env.CONFERO_BIN
  ? path.resolve(process.env.CONFERO_BIN)
  : path.join(ROOT, 'target/debug/confero');
export const CHROMIUM = process.env.CHROMIUM || '/usr/bin/chromium';
export const SCREENSHOT_DIR = process.env.SCREENSHOT_DIR
  ? path.resolve(process.env.SCREENSHOT_DIR)
  : path.join(ROOT, 'target/browser-screenshots');
export const ADMIN_PASSWORD = 'test-admin-password';
export const LOOPBACK = '127.0.0.1';

// ---- temp files and child processes -----------------------------------------------

/** One folder per test process for data dirs, scenarios and SIPp logs. */
export const WORK_DIR = fs.mkdtempSync(path.join(os.tmpdir(), 'confero-browser-'));

const children = new Set();

function track(child) {
  children.add(child);
  child.once('exit', () => children.delete(child));
  return child;
}

/** SIGKILLs every child still running (only the ones this process started). */
export function killAll() {
  for (const child of children) {
    try {
      child.kill('SIGKILL');
    } catch {
      // already gone
    }
  }
  children.clear();
}

process.once('exit', () => {
  killAll();
  if (process.env.KEEP_TMP) {
    process.stderr.write(`(KEEP_TMP: test files kept in ${WORK_DIR})\n`);
  } else {
    fs.rmSync(WORK_DIR, { recursive: true, force: true });
  }
});
for (const signal of ['SIGINT', 'SIGTERM']) {
  process.once(signal, () => {
    killAll();
    process.exit(130);
  });
}

export function tmpDir(prefix) {
  return fs.mkdtempSync(path.join(WORK_DIR, `${prefix}-`));
}

// ---- ports ------------------------------------------------------------------------

/** A TCP port on 127.0.0.1 that was free a moment ago (bound to 0 and read back). */
export async function freeTcpPort() {
  const server = net.createServer();
  server.listen(0, LOOPBACK);
  await once(server, 'listening');
  const { port } = server.address();
  await new Promise((resolve) => server.close(resolve));
  return port;
}

async function udpPortFree(port) {
  const socket = dgram.createSocket('udp4');
  try {
    await new Promise((resolve, reject) => {
      socket.once('error', reject);
      socket.bind(port, LOOPBACK, resolve);
    });
    return socket.address().port;
  } catch {
    return null;
  } finally {
    try {
      socket.close();
    } catch {
      // never bound
    }
  }
}

/** A UDP port on 127.0.0.1 that was free a moment ago. */
export async function freeUdpPort() {
  return udpPortFree(0);
}

/**
 * A free UDP port `p` with `p+1 … p+span-1` free as well (RTP/RTCP, and SIPp's media
 * port which also takes p+2 for video).
 */
export async function freeUdpPortRange(span = 4) {
  for (let attempt = 0; attempt < 50; attempt++) {
    const base = await freeUdpPort();
    if (base + span > 65535) continue;
    let ok = true;
    for (let i = 1; i < span && ok; i++) ok = (await udpPortFree(base + i)) !== null;
    if (ok) return base;
  }
  throw new Error(`no ${span} consecutive free UDP ports found`);
}

// ---- small utilities ----------------------------------------------------------------

/**
 * Retries `fn` until it returns without throwing (its value is returned) or `timeout` ms
 * pass; then throws its last error, prefixed with `message`.
 */
export async function eventually(fn, { timeout = 10_000, interval = 100, message } = {}) {
  const deadline = Date.now() + timeout;
  let last;
  for (;;) {
    try {
      return await fn();
    } catch (err) {
      last = err;
    }
    if (Date.now() >= deadline) break;
    await sleep(interval);
  }
  if (message && last instanceof Error) last.message = `${message} (after ${timeout} ms): ${last.message}`;
  throw last;
}

function commandExists(cmd) {
  return spawnSync('sh', ['-c', `command -v ${cmd}`], { stdio: 'ignore' }).status === 0;
}

/**
 * For node:test's `skip` option: false when `tool` is there, else a reason to skip.
 * Under CI a missing tool is an error instead (CI must run every test).
 */
export function needs(tool, debianPackage = tool) {
  const present = tool.startsWith('/') ? fs.existsSync(tool) : commandExists(tool);
  if (present) return false;
  const reason = `${tool} is not installed (apt-get install ${debianPackage})`;
  if (process.env.CI) throw new Error(`${reason}, and CI must run every browser test`);
  return reason;
}

export const sippAvailable = () => commandExists('sipp');

const ANSI = /\x1b\[[0-9;]*m/g;

// ---- the PBX --------------------------------------------------------------------------

/** Waits (up to `timeoutMs`) for the binary to exist: it may be mid-rebuild. */
async function waitForBinary(bin, timeoutMs) {
  const deadline = Date.now() + timeoutMs;
  let told = false;
  for (;;) {
    try {
      fs.accessSync(bin, fs.constants.X_OK);
      return;
    } catch {
      if (Date.now() > deadline) {
        throw new Error(`${bin} is missing or not executable (build it with cargo build --bin confero, or set CONFERO_BIN)`);
      }
      if (!told) {
        process.stderr.write(`waiting for ${bin} to appear (being rebuilt?)\n`);
        told = true;
      }
      await sleep(1000);
    }
  }
}

/**
 * Starts `confero` and resolves once it printed `confero ready: …`.
 * Options: dataDir (default: a fresh temp dir), args (default: SIP and HTTP on
 * 127.0.0.1:0, public address 127.0.0.1), extraArgs (e.g. `--https-listen 127.0.0.1:0
 * --tls-cert C --tls-key K`, see selfSignedCert(); the PBX then has `https`), env,
 * adminPassword.
 */
export async function startPbx(options = {}) {
  const pbx = new Pbx(options);
  await pbx.start();
  return pbx;
}

export class Pbx {
  constructor({
    dataDir,
    args,
    extraArgs = [],
    env = {},
    adminPassword = ADMIN_PASSWORD,
    bin = CONFERO_BIN,
  } = {}) {
    this.dataDir = dataDir ?? tmpDir('data');
    this.baseArgs = args;
    this.extraArgs = extraArgs;
    this.env = env;
    this.adminPassword = adminPassword;
    this.bin = bin;
    this.logFile = path.join(this.dataDir, '..', `${path.basename(this.dataDir)}.log`);
    this.lines = [];
    this.child = null;
    this.token = null;
    /** Filled by start(): `host:port` strings (https null unless enabled) and the console/API base URL. */
    this.sip = null;
    this.http = null;
    this.https = null;
    this.url = null;
  }

  listenArgs(sipAddr, httpAddr) {
    return [
      '--sip-listen',
      sipAddr,
      '--http-listen',
      httpAddr,
      '--public-address',
      LOOPBACK,
    ];
  }

  async start({ sipAddr = `${LOOPBACK}:0`, httpAddr = `${LOOPBACK}:0` } = {}) {
    if (this.child) throw new Error('confero is already running');
    await waitForBinary(this.bin, 180_000);
    const args = [
      '--data-dir',
      this.dataDir,
      ...(this.baseArgs ?? this.listenArgs(sipAddr, httpAddr)),
      ...this.extraArgs,
    ];
    const env = {
      ...process.env,
      CONFERO_ADMIN_PASSWORD: this.adminPassword,
      RUST_LOG: process.env.RUST_LOG || 'info,confero_pbx=debug',
      NO_COLOR: '1',
      ...this.env,
    };
    const log = fs.createWriteStream(this.logFile, { flags: 'a' });
    log.write(`---- ${new Date().toISOString()} ${this.bin} ${args.join(' ')}\n`);
    // The binary can be swapped under us by a rebuild: retry a spawn that fails on that.
    let child;
    for (let attempt = 0; ; attempt++) {
      child = spawn(this.bin, args, { env, stdio: ['ignore', 'pipe', 'pipe'] });
      const error = await Promise.race([
        once(child, 'spawn').then(() => null),
        once(child, 'error').then(([e]) => e),
      ]);
      if (!error) break;
      if (attempt >= 60 || !['ENOENT', 'ETXTBSY', 'EACCES'].includes(error.code)) throw error;
      await sleep(1000);
      await waitForBinary(this.bin, 180_000);
    }
    track(child);
    this.child = child;
    const exited = once(child, 'exit');
    this.exited = exited;
    const ready = new Promise((resolve, reject) => {
      const onLine = (line) => {
        line = line.replace(ANSI, '');
        log.write(`${line}\n`);
        this.lines.push(line);
        if (this.lines.length > 2000) this.lines.splice(0, 1000);
        if (line.startsWith('confero ready: ')) resolve(line);
      };
      readline.createInterface({ input: child.stdout }).on('line', onLine);
      readline.createInterface({ input: child.stderr }).on('line', onLine);
      exited.then(([code, signal]) => {
        log.end();
        reject(new Error(`confero exited (${code ?? signal}) before it was ready:\n${this.logTail(40)}`));
      });
    });
    let timer;
    const timeout = new Promise((_, reject) => {
      timer = setTimeout(() => reject(new Error(`confero did not print its ready line in 30 s:\n${this.logTail(40)}`)), 30_000);
    });
    let line;
    try {
      line = await Promise.race([ready, timeout]);
    } catch (err) {
      child.kill('SIGKILL');
      this.child = null;
      throw err;
    } finally {
      clearTimeout(timer);
    }
    // confero ready: sip=127.0.0.1:PORT (udp+tcp, advertised …) http=127.0.0.1:PORT …
    const field = (name) => line.match(new RegExp(`(?:^|\\s)${name}=(\\S+)`))?.[1] ?? null;
    this.sip = field('sip');
    this.http = field('http');
    this.https = field('https');
    if (!this.sip || !this.http) throw new Error(`unexpected ready line: ${line}`);
    this.sipPort = Number(this.sip.split(':').pop());
    this.httpPort = Number(this.http.split(':').pop());
    this.url = `http://${this.http}`;
    return this;
  }

  /** SIP over WebSocket (RFC 7118) on the HTTP listener. */
  get wsUrl() {
    return `ws://${this.http}/ws`;
  }

  /** SIP over secure WebSocket on the HTTPS listener (null without --https-listen). */
  get wssUrl() {
    return this.https ? `wss://${this.https}/ws` : null;
  }

  get running() {
    return this.child !== null && this.child.exitCode === null && this.child.signalCode === null;
  }

  /** Stops the process with SIGTERM (as an operator would); throws unless it exits 0 within 10 s. */
  async stop() {
    const child = this.child;
    if (!child) return;
    this.child = null;
    if (child.exitCode !== null || child.signalCode !== null) {
      throw new Error(`confero had already exited (${child.exitCode ?? child.signalCode}):\n${this.logTail(40)}`);
    }
    child.kill('SIGTERM');
    const timer = setTimeout(() => child.kill('SIGKILL'), 10_000);
    const [code, signal] = await this.exited;
    clearTimeout(timer);
    if (code !== 0) {
      throw new Error(`confero exited with ${code ?? signal} after SIGTERM (SIGKILL after 10 s):\n${this.logTail(40)}`);
    }
  }

  /** SIGKILL, no questions asked (a crash); the data dir stays. */
  async kill() {
    const child = this.child;
    if (!child) return;
    this.child = null;
    if (child.exitCode === null && child.signalCode === null) {
      child.kill('SIGKILL');
      await this.exited;
    }
  }

  /**
   * SIGTERM, then starts again on the same data dir; by default on the same ports (what an
   * operator's restart does: phones and open browser pages keep their address).
   * `whileDown`: an async function run once the process has exited and before it starts
   * again (to look at what clients show while the PBX is away).
   */
  async restart({ samePorts = true, whileDown } = {}) {
    const sip = this.sip;
    const http = this.http;
    await this.stop();
    if (whileDown) await whileDown();
    if (samePorts && !this.baseArgs) {
      // A TCP listener can take a moment to be re-bindable; retry briefly.
      for (let attempt = 0; ; attempt++) {
        try {
          return await this.start({ sipAddr: sip, httpAddr: http });
        } catch (err) {
          if (attempt >= 10 || !/address|in use|bind/i.test(String(err.message))) throw err;
          await sleep(300);
        }
      }
    }
    return this.start();
  }

  /** Stops (SIGTERM, must exit 0) and removes the data dir unless KEEP_TMP. */
  async close() {
    try {
      await this.stop();
    } finally {
      if (!process.env.KEEP_TMP) fs.rmSync(this.dataDir, { recursive: true, force: true });
    }
  }

  /** The last `n` lines the server logged (stdout and stderr, colours stripped). */
  logTail(n = 50) {
    return this.lines.slice(-n).join('\n');
  }

  /** Lines logged so far matching `re`. */
  logsMatching(re) {
    return this.lines.filter((l) => re.test(l));
  }

  /**
   * One request to the REST API (or any path of the HTTP listener).
   * `auth`: 'token' (default: a bearer token created once with admin Basic credentials,
   * since every Basic request costs an argon2 check — ~0.7 s in a debug build), 'basic'
   * (admin:<password>), 'none', { basic: [user, password] } or { bearer: token }.
   * Returns { status, headers, text, json } (json null unless the body is JSON).
   */
  async api(method, urlPath, body, { auth = 'token', headers = {} } = {}) {
    const h = { ...headers };
    if (auth === 'token') {
      h.authorization = `Bearer ${await this.apiToken()}`;
    } else if (auth === 'basic') {
      h.authorization = basic('admin', this.adminPassword);
    } else if (auth?.basic) {
      h.authorization = basic(...auth.basic);
    } else if (auth?.bearer) {
      h.authorization = `Bearer ${auth.bearer}`;
    }
    let payload;
    if (body !== undefined) {
      payload = typeof body === 'string' ? body : JSON.stringify(body);
      h['content-type'] ??= 'application/json';
    }
    const res = await fetch(`${this.url}${urlPath}`, {
      method,
      headers: h,
      body: payload,
      redirect: 'manual',
      signal: AbortSignal.timeout(15_000),
    });
    const text = await res.text();
    let json = null;
    if ((res.headers.get('content-type') || '').includes('json')) {
      try {
        json = JSON.parse(text);
      } catch {
        // leave null
      }
    }
    return { status: res.status, headers: res.headers, text, json };
  }

  /** Like api(), but throws unless the status is `expect` (a number or a list). */
  async apiExpect(expect, method, urlPath, body, options) {
    const res = await this.api(method, urlPath, body, options);
    const ok = Array.isArray(expect) ? expect.includes(res.status) : res.status === expect;
    if (!ok) throw new Error(`${method} ${urlPath} → ${res.status}, expected ${expect}: ${res.text}`);
    return res.json ?? res.text;
  }

  /** An API token, created once (with admin Basic credentials). */
  async apiToken() {
    if (!this.token) {
      const res = await this.api('POST', '/api/v1/tokens', { name: `browser-tests-${Date.now()}` }, { auth: 'basic' });
      if (res.status !== 201 && res.status !== 200) throw new Error(`create API token → ${res.status}: ${res.text}`);
      this.token = res.json.token;
    }
    return this.token;
  }

  /** Creates a user in the draft with a known SIP password; returns it. */
  createUser(name, extension, sipUsername, sipPassword) {
    return this.apiExpect(201, 'POST', '/api/v1/users', {
      name,
      extension,
      sip_username: sipUsername,
      sip_password: sipPassword,
    });
  }

  /** Creates a conference in the draft ({name, extension, access_code, …}); returns it. */
  createConference(room) {
    return this.apiExpect(201, 'POST', '/api/v1/conferences', room);
  }

  /** Applies the draft to production. */
  apply() {
    return this.apiExpect(200, 'POST', '/api/v1/changes/apply', {});
  }

  /** Number of pending changes (the console's Apply changes badge). */
  async pending() {
    return (await this.apiExpect(200, 'GET', '/api/v1/changes')).pending;
  }

  async conferences() {
    return this.apiExpect(200, 'GET', '/api/v1/conferences');
  }

  async conferenceByExtension(extension) {
    return (await this.conferences()).find((c) => c.extension === extension) ?? null;
  }

  async participants(conferenceId) {
    return this.apiExpect(200, 'GET', `/api/v1/conferences/${conferenceId}/participants`);
  }

  /** The live registrar bindings (GET /api/v1/registrations). */
  async registrations() {
    return this.apiExpect(200, 'GET', '/api/v1/registrations');
  }

  /** The calls in progress (GET /api/v1/calls): { id, caller, callee, state, … }. */
  async calls() {
    return this.apiExpect(200, 'GET', '/api/v1/calls');
  }
}

function basic(user, password) {
  return `Basic ${Buffer.from(`${user}:${password}`).toString('base64')}`;
}

// ---- SIPp -----------------------------------------------------------------------------

/**
 * Builds a scenario from tests/sipp/`base` (`caller.xml.in`/`callee.xml.in`) and an
 * outcome `part`, replacing `@NAME@` placeholders from `vars` (like the Rust helper
 * `scenario()`); `part` may be null for a complete scenario file such as register.xml.
 * Returns the path of the file written into `dir`.
 */
export function scenario(dir, base, part, vars = {}) {
  let text = fs.readFileSync(path.join(SIPP_DIR, base), 'utf8');
  if (part) {
    let partText = fs.readFileSync(path.join(SIPP_DIR, part), 'utf8');
    if (partText.includes('@ANSWERS@')) {
      partText = partText.replaceAll('@ANSWERS@', fs.readFileSync(path.join(SIPP_DIR, 'callee_answers.part'), 'utf8'));
    }
    text = text.replaceAll('@OUTCOME@', partText);
  }
  for (const [k, v] of Object.entries(vars)) text = text.replaceAll(`@${k}@`, String(v));
  const left = text.match(/@[A-Z_]+@/);
  if (left) throw new Error(`scenario ${base}+${part}: placeholder ${left[0]} not given`);
  const name = `${base.replace(/\.xml(\.in)?$/, '')}${part ? `-${part.replace(/\.part$/, '')}` : ''}-${Date.now()}-${Math.random().toString(36).slice(2, 7)}.xml`;
  const file = path.join(dir, name);
  fs.writeFileSync(file, text);
  return file;
}

/** Writes a complete inline scenario (XML text) into `dir`; returns its path. */
export function inlineScenario(dir, name, xml) {
  const file = path.join(dir, `${name}.xml`);
  fs.writeFileSync(file, xml);
  return file;
}

/**
 * One SIPp run (`-m 1`, bounded by SIPp's own -timeout and a hard kill after
 * `timeoutMs`). Bound to 127.0.0.1:`localPort`; media on a free port unless `args`
 * names -mp.
 */
export class Sipp {
  static async spawn(name, scenarioFile, localPort, args = [], { timeoutMs = 30_000 } = {}) {
    const logDir = tmpDir(`sipp-${name}`);
    const mediaArgs = args.includes('-mp') ? [] : ['-mp', String(await freeUdpPortRange(4))];
    const fullArgs = [
      '-sf', scenarioFile,
      '-i', LOOPBACK,
      '-p', String(localPort),
      ...mediaArgs,
      '-m', '1',
      '-nostdin',
      '-timeout', `${Math.ceil(timeoutMs / 1000)}s`,
      '-timeout_error',
      '-trace_err', '-error_file', path.join(logDir, 'errors.log'),
      '-trace_msg', '-message_file', path.join(logDir, 'messages.log'),
      ...args,
    ];
    return new Sipp(name, fullArgs, logDir, timeoutMs);
  }

  constructor(name, args, logDir, timeoutMs) {
    this.name = name;
    this.args = args;
    this.logDir = logDir;
    this.stderr = '';
    this.child = track(spawn('sipp', args, { stdio: ['ignore', 'ignore', 'pipe'] }));
    this.child.stderr.on('data', (d) => {
      this.stderr += d;
    });
    this.result = new Promise((resolve) => {
      this.child.once('error', (error) => resolve({ code: null, signal: null, error }));
      this.child.once('exit', (code, signal) => resolve({ code, signal }));
    });
    // Hard bound on top of SIPp's -timeout.
    this.killer = setTimeout(() => this.child.kill('SIGKILL'), timeoutMs + 10_000);
    this.result.then(() => clearTimeout(this.killer));
  }

  get running() {
    return this.child.exitCode === null && this.child.signalCode === null;
  }

  /** What SIPp logged (errors, messages, stderr), for failure messages. */
  logs() {
    const read = (f) => {
      try {
        return fs.readFileSync(path.join(this.logDir, f), 'utf8');
      } catch {
        return '';
      }
    };
    return `--- errors ---\n${read('errors.log')}\n--- messages ---\n${read('messages.log')}\n--- stderr ---\n${this.stderr}`;
  }

  /** Resolves when SIPp ends; throws with its logs unless it succeeded (exit 0). */
  async expectSuccess() {
    const { code, signal, error } = await this.result;
    if (error) throw new Error(`sipp ${this.name} could not run: ${error.message}`);
    if (code !== 0) {
      throw new Error(`sipp ${this.name} failed (exit ${code ?? signal}):\n${this.logs()}`);
    }
  }

  /** SIGKILL (cleanup after a failed test); resolves when it is gone. */
  async kill() {
    if (this.running) this.child.kill('SIGKILL');
    await this.result;
  }
}

/**
 * Registers SIP user `user` from 127.0.0.1:`localPort` with digest auth (register.xml);
 * the Contact names `contactPort` (default: the same port, so a callee SIPp started
 * there afterwards gets the calls). Resolves once the 200 OK came.
 */
export async function registerPhone(pbx, user, password, { localPort, contactPort, transport = 'u1', expires = 3600 } = {}) {
  localPort ??= await freeUdpPort();
  contactPort ??= localPort;
  const sipp = await Sipp.spawn(`register-${user}-${localPort}`, path.join(SIPP_DIR, 'register.xml'), localPort, [
    '-s', user,
    '-au', user,
    '-ap', password,
    '-key', 'contact_port', String(contactPort),
    '-key', 'expires', String(expires),
    '-t', transport,
    pbx.sip,
  ], { timeoutMs: 15_000 });
  await sipp.expectSuccess();
  return { localPort, contactPort };
}

/**
 * A registered phone that runs `part` (a callee_*.part) when the PBX calls it: registers
 * `user`, then listens with SIPp on the registered contact port. Returns the Sipp.
 */
export async function answeringPhone(pbx, { user, password, part = 'callee_waits_bye.part', timeoutMs = 30_000 }) {
  const { localPort } = await registerPhone(pbx, user, password);
  const file = scenario(tmpDir('scenario'), 'callee.xml.in', part);
  const phone = await Sipp.spawn(`phone-${user}`, file, localPort, [], { timeoutMs });
  await sleep(300); // let it bind before anything calls it
  return phone;
}

/**
 * A phone dialling `target` (a room's extension, or any number) with digest auth as
 * `user`, then playing `part` (default caller_is_hung_up.part: it stays until the PBX
 * hangs up, e.g. on a kick). `vars` fill placeholders (caller_in_room.part needs
 * WAIT_MS, HOLD_MS and DTMF). Returns the running Sipp.
 */
export async function dial(pbx, { target, user, password, part = 'caller_is_hung_up.part', vars = {}, timeoutMs = 30_000 }) {
  const file = scenario(tmpDir('scenario'), 'caller.xml.in', part, vars);
  return Sipp.spawn(`dial-${target}-as-${user}`, file, await freeUdpPort(), [
    '-s', String(target),
    '-au', user,
    '-ap', password,
    pbx.sip,
  ], { timeoutMs });
}

// ---- baresip: a desk phone that sends a sine tone and records what it hears ------------

/**
 * A baresip phone (a separate process, killed when the test process ends) driven through
 * its `ctrl_tcp` module (JSON in netstrings), as crates/server/tests/common/baresip.rs: it
 * sends a sine of `toneHz` (ausine) and records what it decodes (sndfile, `*-dec.wav`).
 * `Baresip.start(pbx, { user, password, toneHz, codec })` makes one with an account that
 * authenticates its calls without registering (codec: 'PCMU' or 'G722', the only one it
 * offers); with `register: true` it registers (for an hour) and resolves once the PBX
 * lists the binding, so that calls reach it; `autoAnswer: true` answers them at once.
 * `Baresip.withAccount(accountLine, sipPort, toneHz)` takes a line of baresip's `accounts`
 * file.
 */
export class Baresip {
  static async start(pbx, { user, password, toneHz, codec = 'PCMU', sipPort, register = false, autoAnswer = false }) {
    const phone = await Baresip.withAccount(
      `<sip:${user}@${LOOPBACK}:${pbx.sipPort}>;auth_pass=${password};regint=${register ? 3600 : 0}`
        + `${autoAnswer ? ';answermode=auto' : ''};audio_codecs=${codec}`,
      sipPort,
      toneHz,
    );
    if (register) {
      const bound = (r) => r.user === user || new RegExp(`^sips?:${user}@`).test(String(r.user));
      try {
        await eventually(async () => {
          if (!(await pbx.registrations()).some(bound)) throw new Error(`${user} is not in GET /api/v1/registrations`);
        }, { timeout: 10_000, interval: 200, message: `baresip registered ${user}` });
      } catch (err) {
        await phone.kill();
        err.message += `\n--- baresip log ---\n${phone.log()}`;
        throw err;
      }
    }
    return phone;
  }

  static async withAccount(account, sipPort, toneHz) {
    sipPort ??= await freeUdpPort();
    const ctrl = await freeTcpPort();
    const dir = tmpDir('baresip');
    const rec = path.join(dir, 'rec');
    fs.mkdirSync(rec);
    fs.writeFileSync(path.join(dir, 'config'), [
      'poll_method epoll',
      // Media on loopback: without it baresip takes the default route's address, and in
      // a network namespace with only loopback (run.sh) it finds none at all.
      `net_interface ${LOOPBACK}`,
      `sip_listen ${LOOPBACK}:${sipPort}`,
      'rtp_ports 30000-32000',
      'audio_player alsa,null',
      'audio_alert alsa,null',
      `audio_source ausine,${toneHz}`,
      'ausrc_srate 48000',
      'ausrc_channels 2',
      'module_path /usr/lib/baresip/modules',
      'module g711.so',
      'module g722.so',
      'module ausine.so',
      'module alsa.so',
      'module sndfile.so',
      'module_app account.so',
      'module_app menu.so',
      'module_app ctrl_tcp.so',
      `ctrl_tcp_listen ${LOOPBACK}:${ctrl}`,
      `snd_path ${rec}`,
      '',
    ].join('\n'));
    fs.writeFileSync(path.join(dir, 'accounts'), `${account}\n`);
    const phone = new Baresip(dir, ctrl, toneHz);
    const deadline = Date.now() + 10_000;
    for (;;) {
      if (!phone.running) throw new Error(`baresip exited at start:\n${phone.log()}`);
      const ok = await new Promise((resolve) => {
        const s = net.connect(ctrl, LOOPBACK);
        s.once('connect', () => {
          s.destroy();
          resolve(true);
        });
        s.once('error', () => resolve(false));
      });
      if (ok) return phone;
      if (Date.now() > deadline) throw new Error(`baresip did not open its control port in 10 s:\n${phone.log()}`);
      await sleep(50);
    }
  }

  constructor(dir, ctrl, toneHz) {
    this.dir = dir;
    this.ctrl = ctrl;
    this.toneHz = toneHz;
    const log = fs.openSync(path.join(dir, 'baresip.log'), 'a');
    this.child = track(spawn('baresip', ['-f', dir], { stdio: ['ignore', log, log] }));
    fs.closeSync(log);
    this.exited = new Promise((resolve) => {
      this.child.once('error', (error) => resolve({ error }));
      this.child.once('exit', (code, signal) => resolve({ code, signal }));
    });
  }

  get running() {
    return this.child.exitCode === null && this.child.signalCode === null;
  }

  log() {
    try {
      return fs.readFileSync(path.join(this.dir, 'baresip.log'), 'utf8');
    } catch {
      return '';
    }
  }

  /** One ctrl_tcp command; resolves with its reply (the JSON with `response: true`), or null after 2 s. */
  command(command, params = '') {
    const body = JSON.stringify({ command, params, token: 't' });
    return new Promise((resolve) => {
      const s = net.connect(this.ctrl, LOOPBACK);
      let buf = Buffer.alloc(0);
      let reply = null;
      const done = () => {
        clearTimeout(timer);
        s.destroy();
        resolve(reply);
      };
      const timer = setTimeout(done, 2000);
      s.once('connect', () => s.write(`${Buffer.byteLength(body)}:${body},`));
      s.on('data', (d) => {
        buf = Buffer.concat([buf, d]);
        // Netstrings: LEN:JSON, — events (event: true) may come before the reply.
        for (;;) {
          const colon = buf.indexOf(':');
          if (colon < 0) return;
          const len = Number(buf.toString('latin1', 0, colon));
          if (buf.length < colon + 1 + len + 1) return;
          const json = buf.toString('utf8', colon + 1, colon + 1 + len);
          buf = buf.subarray(colon + 1 + len + 1);
          try {
            const msg = JSON.parse(json);
            if (msg.response) {
              reply = msg;
              done();
              return;
            }
          } catch {
            // not JSON: skip it
          }
        }
      });
      s.once('error', done);
      s.once('close', done);
    });
  }

  dial(pbx, target) {
    return this.command('dial', `sip:${target}@${LOOPBACK}:${pbx.sipPort}`);
  }

  /** Keys `digits` in the current call as RFC 4733 events, one key press per digit. */
  async sendDigits(digits) {
    for (const d of digits) {
      await this.command('sndcode', d);
      await sleep(250);
    }
  }

  hangup() {
    return this.command('hangup');
  }

  /**
   * The calls that reached it so far, from its log ("Incoming call from: NAME URI - …" when
   * it rings, "call: answering call on line N from URI with 200" when it answers by
   * itself): a list of { name (null when answered by itself), uri, user } (user: the caller
   * URI's user part, the number it shows).
   */
  incomingCalls() {
    const calls = /Incoming call from: (.*?) ?(sips?:\S+) - |call: answering call on line \d+ from (sips?:\S+) with /g;
    return [...this.log().matchAll(calls)].map(([, name, ringing, answered]) => {
      const uri = ringing ?? answered;
      return { name: ringing ? name.trim() : null, uri, user: uri.match(/^sips?:([^@;>]+)@/)?.[1] ?? null };
    });
  }

  /** The recording of what it decoded (*-dec.wav, finished once the call ended): { rate, samples }. */
  heard() {
    const rec = path.join(this.dir, 'rec');
    const file = fs.readdirSync(rec).find((f) => f.endsWith('-dec.wav'));
    if (!file) throw new Error(`no recording in ${rec}:\n${this.log()}`);
    return readWav(fs.readFileSync(path.join(rec, file)));
  }

  async kill() {
    if (this.running) this.child.kill('SIGKILL');
    await this.exited;
  }
}

// ---- audio: WAV files and tone analysis (as crates/server/tests/common/baresip.rs) -----

/** A 16-bit PCM mono WAV of a `hz` sine (`seconds` long at `rate`, amplitude `amplitude`). */
export function writeSineWav(file, { hz, seconds, rate = 48_000, amplitude = 8000 }) {
  const n = Math.round(seconds * rate);
  const data = Buffer.alloc(n * 2);
  for (let i = 0; i < n; i++) data.writeInt16LE(Math.round(amplitude * Math.sin((2 * Math.PI * hz * i) / rate)), i * 2);
  const header = Buffer.alloc(44);
  header.write('RIFF', 0);
  header.writeUInt32LE(36 + data.length, 4);
  header.write('WAVE', 8);
  header.write('fmt ', 12);
  header.writeUInt32LE(16, 16);
  header.writeUInt16LE(1, 20); // PCM
  header.writeUInt16LE(1, 22); // mono
  header.writeUInt32LE(rate, 24);
  header.writeUInt32LE(rate * 2, 28);
  header.writeUInt16LE(2, 32);
  header.writeUInt16LE(16, 34);
  header.write('data', 36);
  header.writeUInt32LE(data.length, 40);
  fs.writeFileSync(file, Buffer.concat([header, data]));
  return file;
}

/**
 * The first channel of a 16-bit PCM WAV as { rate, samples: Int16Array }. A data chunk
 * whose length was never filled in (0, or past the end) runs to the end of the file.
 */
export function readWav(bytes) {
  const rate = bytes.readUInt32LE(24);
  const channels = Math.max(1, bytes.readUInt16LE(22));
  let pos = 12;
  while (pos + 8 <= bytes.length) {
    const id = bytes.toString('latin1', pos, pos + 4);
    let len = bytes.readUInt32LE(pos + 4);
    if (id === 'data') {
      if (len === 0 || pos + 8 + len > bytes.length) len = bytes.length - pos - 8;
      const frames = Math.floor(len / 2 / channels);
      const samples = new Int16Array(frames);
      for (let i = 0; i < frames; i++) samples[i] = bytes.readInt16LE(pos + 8 + i * 2 * channels);
      return { rate, samples };
    }
    pos += 8 + len + (len & 1);
  }
  throw new Error('no data chunk in WAV');
}

/** Share of the signal's energy at `hz` (Goertzel), 0..1. */
export function toneShare(samples, rate, hz) {
  const n = samples.length;
  if (n === 0) return 0;
  const k = Math.round((n * hz) / rate);
  const w = (2 * Math.PI * k) / n;
  const coeff = 2 * Math.cos(w);
  let s1 = 0;
  let s2 = 0;
  let energy = 0;
  for (let i = 0; i < n; i++) {
    const x = samples[i];
    energy += x * x;
    const s0 = x + coeff * s1 - s2;
    s2 = s1;
    s1 = s0;
  }
  const power = s1 * s1 + s2 * s2 - coeff * s1 * s2;
  return energy === 0 ? 0 : Math.min(1, (2 * power) / n / energy);
}

/** Root mean square of 16-bit samples. */
export function rms(samples) {
  if (samples.length === 0) return 0;
  let sum = 0;
  for (let i = 0; i < samples.length; i++) sum += samples[i] * samples[i];
  return Math.sqrt(sum / samples.length);
}

/** The samples between `fromS` and `toS` seconds. */
export function audioWindow(samples, rate, fromS, toS) {
  const a = Math.min(samples.length, Math.max(0, Math.floor(fromS * rate)));
  const b = Math.min(samples.length, Math.max(0, Math.floor(toS * rate)));
  return samples.subarray(a, b);
}

// ---- the browser -----------------------------------------------------------------------

export const CHROMIUM_ARGS = [
  '--headless',
  '--no-sandbox',
  '--disable-gpu',
  '--disable-quic',
  '--no-first-run',
  '--disable-background-networking',
  '--disable-component-update',
  '--disable-sync',
  // Nothing but loopback: every host name fails to resolve (tests use 127.0.0.1 literals).
  '--host-resolver-rules=MAP * ~NOTFOUND , EXCLUDE 127.0.0.1 , EXCLUDE localhost',
];

/**
 * Chromium with a fake microphone playing `wav` in a loop (Chromium loops the file even
 * with `%noloop`, so every call of a run hears it however late it comes), media on
 * loopback allowed and audio playing without a gesture, as a phone page needs.
 */
export function launchPhoneBrowser(wav, options = {}) {
  return launchBrowser({
    ...options,
    extraArgs: [
      '--use-fake-device-for-media-stream',
      '--use-fake-ui-for-media-stream',
      `--use-file-for-fake-audio-capture=${wav}`,
      '--allow-loopback-in-peer-connection',
      '--autoplay-policy=no-user-gesture-required',
      ...(options.extraArgs ?? []),
    ],
  });
}

/**
 * Makes fresh users on `pbx()` (a function, as the PBX starts later), extensions from
 * `first` up, so that no test depends on another: `await newUser('alice')` returns
 * { extension, username, password }; with `apply` the change is applied at once.
 */
export function userMaker(pbx, first, { apply = false } = {}) {
  let count = 0;
  return async (label) => {
    count += 1;
    const extension = String(first + count);
    const username = `${label}${count}`;
    const password = `${username}-secret-${Math.random().toString(36).slice(2, 8)}`;
    await pbx().createUser(`${label} ${count}`, extension, username, password);
    if (apply) await pbx().apply();
    return { extension, username, password };
  };
}

/**
 * Launches Debian's Chromium through playwright-core (no browser download: it is never
 * installed by Playwright here). Playwright gives each launch a fresh temporary
 * user-data-dir, removed on close. Returns
 * { browser, context, page, newPage(), shot(name), close() } where `context` has
 * `baseURL` (so page.goto('/conferences') works), the default timeouts set and page
 * errors recorded in `pageErrors`.
 * Options: baseURL, extraArgs (e.g. fake media devices for WebRTC), contextOptions
 * (permissions, viewport…), timeout (default 10 s per action, 15 s per navigation),
 * ignoreCertificateErrors (Chromium's --ignore-certificate-errors: a self-signed
 * certificate on wss:// is accepted).
 */
export async function launchBrowser({
  baseURL,
  extraArgs = [],
  contextOptions = {},
  timeout = 10_000,
  ignoreCertificateErrors = false,
} = {}) {
  const { chromium } = await import('playwright-core');
  if (!fs.existsSync(CHROMIUM)) throw new Error(`${CHROMIUM} is missing: apt-get install chromium (or run tests/browser/run.sh)`);
  const browser = await chromium.launch({
    executablePath: CHROMIUM,
    args: [
      ...CHROMIUM_ARGS,
      // A self-signed certificate (selfSignedCert()) on wss:// and https:// is accepted.
      ...(ignoreCertificateErrors ? ['--ignore-certificate-errors'] : []),
      ...extraArgs,
    ],
    timeout: 30_000,
  });
  const pageErrors = [];
  const newContext = async (options = {}) => {
    const context = await browser.newContext({
      baseURL,
      viewport: { width: 1280, height: 800 },
      ...contextOptions,
      ...options,
    });
    context.setDefaultTimeout(timeout);
    context.setDefaultNavigationTimeout(Math.max(timeout, 15_000));
    context.on('page', (p) => p.on('pageerror', (e) => pageErrors.push(`${p.url()}: ${e.message}`)));
    return context;
  };
  const context = await newContext();
  const page = await context.newPage();
  fs.mkdirSync(SCREENSHOT_DIR, { recursive: true });
  return {
    browser,
    context,
    page,
    pageErrors,
    newContext,
    newPage: () => context.newPage(),
    /** Saves a full-page PNG as SCREENSHOT_DIR/<name>.png; returns the path. */
    async shot(name, target = page) {
      const file = path.join(SCREENSHOT_DIR, `${name.replace(/[^A-Za-z0-9._-]+/g, '_')}.png`);
      await target.screenshot({ path: file, fullPage: true });
      return file;
    },
    close: () => browser.close(),
  };
}

// ---- browser phones: SIP.js and JsSIP from node_modules, certificates -----------------

/**
 * A self-signed certificate for 127.0.0.1 (subjectAltName IP and DNS localhost), made
 * with openssl in `dir`; returns { cert, key } (PEM file paths) for --tls-cert/--tls-key.
 */
export function selfSignedCert(dir = tmpDir('tls'), { ip = LOOPBACK, days = 2 } = {}) {
  const cert = path.join(dir, 'cert.pem');
  const key = path.join(dir, 'key.pem');
  const run = spawnSync('openssl', [
    'req', '-x509', '-newkey', 'rsa:2048', '-nodes', '-sha256',
    '-days', String(days),
    '-subj', `/CN=${ip}`,
    '-addext', `subjectAltName=IP:${ip},DNS:localhost`,
    '-keyout', key,
    '-out', cert,
  ], { encoding: 'utf8' });
  if (run.error) throw new Error(`openssl could not run (apt-get install openssl): ${run.error.message}`);
  if (run.status !== 0) throw new Error(`openssl req -x509 failed (${run.status}): ${run.stderr}`);
  return { cert, key };
}

/**
 * A CommonJS `require` for the page (a function run there, from its source): resolves
 * relative and bare ids against the static server's /node_modules the way Node does
 * (package.json `browser` when it is a string, else `main`, then `.js`, `.json`,
 * `/index.js`), loads each file once with a synchronous request and evaluates it. Enough for
 * packages published as CommonJS only (JsSIP 3.13 and its dependencies), without a bundler.
 */
function pageCommonJs() {
  const cache = new Map();
  const get = (url) => {
    const req = new XMLHttpRequest();
    req.open('GET', url, false);
    req.send();
    return req.status === 200 ? req.responseText : null;
  };
  const normalize = (p) => {
    const out = [];
    for (const part of p.split('/')) {
      if (part === '..') out.pop();
      else if (part !== '.' && part !== '') out.push(part);
    }
    return `/${out.join('/')}`;
  };
  const asFile = (p) => {
    for (const candidate of [p, `${p}.js`, `${p}.json`, `${p}/index.js`]) {
      if (cache.has(candidate)) return candidate;
      const text = get(candidate);
      if (text !== null) return { url: candidate, text };
    }
    return null;
  };
  const resolve = (id, fromDir) => {
    if (id.startsWith('./') || id.startsWith('../') || id.startsWith('/')) {
      return asFile(normalize(id.startsWith('/') ? id : `${fromDir}/${id}`));
    }
    const parts = id.split('/');
    const name = id.startsWith('@') ? parts.slice(0, 2).join('/') : parts[0];
    const sub = id.slice(name.length + 1);
    const base = `/node_modules/${name}`;
    if (sub) return asFile(`${base}/${sub}`);
    const pkgText = get(`${base}/package.json`);
    if (pkgText === null) return null;
    const pkg = JSON.parse(pkgText);
    const main = (typeof pkg.browser === 'string' && pkg.browser) || pkg.main || 'index.js';
    return asFile(normalize(`${base}/${main}`));
  };
  const load = (id, fromDir) => {
    const found = resolve(id, fromDir);
    if (found === null) throw new Error(`require('${id}') from ${fromDir}: not found`);
    const url = typeof found === 'string' ? found : found.url;
    if (cache.has(url)) return cache.get(url).exports;
    const module = { exports: {} };
    cache.set(url, module);
    if (url.endsWith('.json')) {
      module.exports = JSON.parse(found.text);
      return module.exports;
    }
    const dir = url.slice(0, url.lastIndexOf('/'));
    // eslint-disable-next-line no-new-func
    const fn = new Function('require', 'module', 'exports', '__filename', '__dirname', `${found.text}\n//# sourceURL=${location.origin}${url}`);
    fn((next) => load(next, dir), module, module.exports, url, dir);
    return module.exports;
  };
  globalThis.global ??= globalThis;
  globalThis.require = (id) => load(id, '/');
}

/** The pages servePhoneLibs() serves: each sets `window.<global>` and `window.libraryReady`. */
const PHONE_PAGES = {
  'sipjs.html': `<!doctype html><meta charset="utf-8"><title>SIP.js phone</title>
<script type="module">
import * as SIP from '/node_modules/sip.js/lib/index.js';
window.SIP = SIP;
window.libraryReady = SIP.version;
</script>`,
  'jssip.html': `<!doctype html><meta charset="utf-8"><title>JsSIP phone</title>
<script src="/commonjs.js"></script>
<script>
window.JsSIP = require('jssip');
window.libraryReady = window.JsSIP.version;
</script>`,
  'blank.html': '<!doctype html><meta charset="utf-8"><title>blank</title>',
};

const CONTENT_TYPES = {
  '.js': 'text/javascript; charset=utf-8',
  '.mjs': 'text/javascript; charset=utf-8',
  '.json': 'application/json; charset=utf-8',
  '.html': 'text/html; charset=utf-8',
};

/**
 * A static HTTP server on a free loopback port for browser phone pages: /node_modules/… of
 * tests/browser (read-only, nothing outside it), /commonjs.js (pageCommonJs) and the pages
 * /sipjs.html (SIP.js 0.21's ES modules as `window.SIP`), /jssip.html (JsSIP as
 * `window.JsSIP`) and /blank.html. Returns { url, close() }.
 */
export async function servePhoneLibs() {
  const modules = path.join(BROWSER_DIR, 'node_modules');
  const server = http.createServer((req, res) => {
    const send = (status, type, body) => {
      res.writeHead(status, { 'content-type': type, 'cache-control': 'no-store' });
      res.end(body);
    };
    const urlPath = decodeURIComponent(new URL(req.url, 'http://x').pathname);
    if (req.method !== 'GET') return send(405, 'text/plain', 'GET only');
    if (urlPath === '/commonjs.js') return send(200, CONTENT_TYPES['.js'], `(${pageCommonJs})();\n`);
    const page = PHONE_PAGES[urlPath.slice(1)];
    if (page) return send(200, CONTENT_TYPES['.html'], page);
    if (urlPath.startsWith('/node_modules/')) {
      const file = path.resolve(modules, `.${urlPath.slice('/node_modules'.length)}`);
      if (file.startsWith(`${modules}${path.sep}`)) {
        try {
          if (fs.statSync(file).isFile()) {
            return send(200, CONTENT_TYPES[path.extname(file)] ?? 'application/octet-stream', fs.readFileSync(file));
          }
        } catch {
          // not there: 404 below
        }
      }
    }
    return send(404, 'text/plain', 'not found');
  });
  server.listen(0, LOOPBACK);
  await once(server, 'listening');
  const { port } = server.address();
  return {
    url: `http://${LOOPBACK}:${port}`,
    close: () => new Promise((resolve) => {
      server.closeAllConnections();
      server.close(resolve);
    }),
  };
}

/**
 * A new page in `b` (a launchBrowser() result) with a phone library loaded from `libs`
 * (servePhoneLibs()): `library` is 'sip.js' (window.SIP) or 'jssip' (window.JsSIP).
 * Resolves with the page once the library reports its version; its console messages
 * collect in `page.consoleLines`, the SIP messages over its WebSockets in
 * `page.sipMessages` ({ sent, text }).
 */
export async function openPhonePage(b, libs, library) {
  const file = { 'sip.js': 'sipjs.html', jssip: 'jssip.html' }[library];
  if (!file) throw new Error(`unknown phone library ${library}`);
  const page = await b.newPage();
  // What the library logs, for failure messages (the static server's 404s are the in-page
  // require probing file names, not errors).
  page.consoleLines = [];
  page.on('console', (m) => {
    if (!/Failed to load resource: .* 404/.test(m.text())) page.consoleLines.push(`${m.type()}: ${m.text()}`);
  });
  // What went over its WebSockets (SIP messages, one a frame), as seen from the page.
  page.sipMessages = [];
  page.on('websocket', (ws) => {
    ws.on('framesent', (f) => page.sipMessages.push({ sent: true, text: String(f.payload) }));
    ws.on('framereceived', (f) => page.sipMessages.push({ sent: false, text: String(f.payload) }));
  });
  await page.goto(`${libs.url}/${file}`);
  await page.waitForFunction(() => window.libraryReady, null, { timeout: 10_000, polling: 100 });
  return page;
}

// ---- console helpers (docs: the console's page contract) ------------------------------

const escapeRe = (s) => s.replace(/[.*+?^${}()|[\]\\]/g, '\\$&');

/**
 * The form control labelled `label` in `scope`. Matches the label as a prefix ending at a
 * word boundary, since a label wrapping its control, a hint inside the label ("3 to 5
 * digits") or a required mark make the accessible name longer than the label's words.
 */
export function field(scope, label) {
  return scope.getByLabel(new RegExp(`^\\s*${escapeRe(label)}(?![\\w-])`));
}

/**
 * Signs in through the login form (`/login`); resolves with the POST's HTTP status once
 * the resulting page has loaded.
 */
export async function signIn(page, { username = 'admin', password = ADMIN_PASSWORD, next } = {}) {
  await page.goto(next ? `/login?next=${encodeURIComponent(next)}` : '/login');
  await field(page, 'Username').fill(username);
  await field(page, 'Password').fill(password);
  const response = await submitAndWait(page, () => page.getByRole('button', { name: 'Sign in' }).click());
  return response.status();
}

/**
 * Runs `action` (a click that submits a form) and resolves with the response to the
 * POST it sends (a 303 on success, the form again with 400/401/403/429 otherwise), after
 * the page that follows has loaded.
 */
export async function submitAndWait(page, action) {
  const responded = page.waitForResponse(
    (r) => r.request().method() === 'POST' && r.request().isNavigationRequest() && r.frame() === page.mainFrame(),
  );
  // The page that results (the redirect's target, or the form again) must have replaced
  // the old one before we look: waiting for 'load' alone can see the old document.
  const committed = page.waitForEvent('framenavigated', (f) => f === page.mainFrame());
  await action();
  const response = await responded;
  await committed;
  await page.waitForLoadState('load');
  return response;
}

/**
 * Declares browser tests that, on failure, save screenshots of every open page and add
 * the PBX's log tail to the error, and that fail on any uncaught script error of the
 * console. `env()` returns `{ b, pbx }` (the launchBrowser() result and the PBX) once the
 * suite's before hook has run.
 */
export function checker(test, env, defaultTimeout = 60_000) {
  return function check(name, options, fn) {
    if (typeof options === 'function') [fn, options] = [options, {}];
    test(name, { timeout: defaultTimeout, ...options }, async (t) => {
      const { b, pbx } = env();
      if (!b || !pbx) throw new Error('the PBX and the browser started (see the before hook)');
      const errorsBefore = b.pageErrors.length;
      try {
        await fn(t);
      } catch (err) {
        const slug = name.replace(/[^A-Za-z0-9]+/g, '-').slice(0, 60);
        const pages = b.browser.contexts().flatMap((c) => c.pages());
        const where = [];
        for (const [i, p] of pages.entries()) {
          try {
            where.push(`${p.url()} → ${await b.shot(`FAILED-${slug}-${i}`, p)}`);
          } catch {
            // page closed
          }
        }
        if (err instanceof Error) {
          err.message += `\n--- open pages ---\n${where.join('\n')}\n--- confero log (tail) ---\n${pbx.logTail(25)}`;
        }
        throw err;
      }
      const fresh = b.pageErrors.slice(errorsBefore);
      if (fresh.length) throw new Error(`uncaught script errors in the console pages: ${fresh.join('; ')}`);
    });
  };
}

/**
 * Opens `urlPath` in page `p`, signing in first when the console sends it to /login; fails
 * unless it ends on that path.
 */
export async function openSignedIn(p, urlPath) {
  const res = await p.goto(urlPath);
  if (res.status() >= 400) throw new Error(`GET ${urlPath} → ${res.status()} (${new URL(p.url()).pathname})`);
  if (new URL(p.url()).pathname === '/login') {
    const status = await signIn(p, { next: urlPath });
    if (![302, 303].includes(status)) throw new Error(`sign-in: a redirect was expected, got ${status}`);
  }
  const at = new URL(p.url()).pathname;
  if (at !== urlPath.split('?')[0]) throw new Error(`${urlPath} after sign-in: ended on ${at}`);
}

// ---- SIP.js in the page, as Odoo 17's voip user agent ----------------------------------

/** The SIP domain Odoo's "PBX Server IP" holds: the AOR's and Request-URIs' host. */
export const SIP_DOMAIN = LOOPBACK;

/**
 * Starts SIP.js in `page` (openPhonePage(…, 'sip.js')) configured as Odoo 17's
 * `sipJsUserAgentConfig` (hackIpInContact, 1 s ICE gathering, no keep-alives) and registers
 * with `expires: 3600`, as Odoo does. Everything the page sees goes into `window.phone`.
 * `incoming`: 'reject' (every INVITE answered 486) or 'ring' (an INVITE becomes
 * `window.phone.session`, its caller `window.phone.incoming` as Odoo's `_onInvite` reads it,
 * until sipJsAnswer(); one more while a call is up is rejected 486).
 */
export async function sipJsRegister(page, { server, user, password, incoming = 'reject' }) {
  await page.evaluate(
    async ({ server, user, password, domain, incoming }) => {
      const SIP = window.SIP;
      const phone = { states: [], rejects: [], errors: [], sessionStates: [], invite: {}, incoming: null };
      window.phone = phone;
      // The call in progress; once Established its remote stream plays in an Audio element,
      // as Odoo's session does (Chromium decodes only a remote track that something plays).
      phone.follow = (session) => {
        phone.session = session;
        session.stateChange.addListener((s) => {
          phone.sessionStates.push(s);
          if (s === SIP.SessionState.Established) {
            const audio = new Audio();
            audio.srcObject = session.sessionDescriptionHandler.remoteMediaStream;
            audio.play().catch((e) => phone.errors.push(`audio.play: ${e}`));
            phone.remoteAudio = audio;
          }
        });
      };
      const ua = new SIP.UserAgent({
        authorizationPassword: password,
        authorizationUsername: user,
        delegate: {
          onInvite: (invitation) => {
            const busy = phone.session && phone.session.state !== SIP.SessionState.Terminated;
            if (incoming !== 'ring' || busy) {
              invitation.reject({ statusCode: 486 });
              return;
            }
            phone.incoming = {
              user: invitation.remoteIdentity.uri.user,
              displayName: invitation.remoteIdentity.displayName,
            };
            phone.follow(invitation);
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
      await ua.start();
      const registerer = new SIP.Registerer(ua, { expires: 3600 });
      registerer.stateChange.addListener((s) => phone.states.push(s));
      phone.registerer = registerer;
      registerer
        .register({ requestDelegate: { onReject: (r) => phone.rejects.push(r.message.statusCode) } })
        .catch((e) => phone.errors.push(`register: ${e}`));
    },
    { server, user, password, domain: SIP_DOMAIN, incoming },
  );
  await waitInPage(
    page,
    () => window.phone.registerer.state === 'Registered' || window.phone.rejects.length || window.phone.errors.length,
    'SIP.js registration ended',
  );
  const state = await page.evaluate(() => window.phone.registerer.state);
  assert.equal(state, 'Registered', await pageState(page));
}

/**
 * Dials `extension` as Odoo's `invite()` does (an Inviter, constraints audio only).
 * Resolves when the session is Established and its media connected (fails on anything
 * else); the answer's status and SDP are in `window.phone.invite`.
 */
export async function sipJsDial(page, extension) {
  await page.evaluate(
    ({ extension, domain }) => {
      const SIP = window.SIP;
      const phone = window.phone;
      const inviter = new SIP.Inviter(phone.ua, SIP.UserAgent.makeURI(`sip:${extension}@${domain}`));
      phone.follow(inviter);
      inviter
        .invite({
          requestDelegate: {
            onAccept: (r) => {
              phone.invite.status = r.message.statusCode;
              phone.invite.answer = r.message.body;
            },
            onReject: (r) => {
              phone.invite.status = r.message.statusCode;
            },
          },
          sessionDescriptionHandlerOptions: { constraints: { audio: true, video: false } },
        })
        .catch((e) => phone.errors.push(`invite: ${e}`));
    },
    { extension, domain: SIP_DOMAIN },
  );
  await sipJsConnected(page, 'the call was answered');
}

/**
 * Waits for the page's INVITE (sipJsRegister with `incoming: 'ring'`) and resolves with
 * its caller: { user (the From URI's user part), displayName }.
 */
export async function sipJsIncoming(page, timeout = 10_000) {
  await waitInPage(page, () => window.phone.incoming !== null, 'an INVITE reached the page', timeout);
  return page.evaluate(() => window.phone.incoming);
}

/**
 * Answers the ringing INVITE as Odoo's `_answerCall()` does (accept, constraints audio
 * only); resolves when the session is Established and its media connected.
 */
export async function sipJsAnswer(page) {
  await page.evaluate(() => {
    window.phone.session
      .accept({ sessionDescriptionHandlerOptions: { constraints: { audio: true, video: false } } })
      .catch((e) => window.phone.errors.push(`accept: ${e}`));
  });
  await sipJsConnected(page, 'the answered call was established');
}

/**
 * The page's session is Established, then its ICE and DTLS are connected: the 200 OK
 * comes before, and until then Chromium can neither send media nor DTMF (canInsertDTMF is
 * false) and nobody hears anything.
 */
async function sipJsConnected(page, what) {
  await waitInPage(
    page,
    () => ['Established', 'Terminated'].includes(window.phone.session.state) || window.phone.errors.length,
    what,
  );
  const state = await page.evaluate(() => window.phone.session.state);
  assert.equal(state, 'Established', await pageState(page));
  await waitInPage(
    page,
    () => window.phone.session.sessionDescriptionHandler.peerConnection.connectionState === 'connected',
    'ICE and DTLS connected',
  );
}

/**
 * Keys `digits` as Odoo's keypad does (`sessionDescriptionHandler.sendDtmf(key)`, RFC 4733
 * through RTCDTMFSender), one key at a time: insertDTMF replaces what is still queued, so
 * each key waits for the previous one (100 ms tone + 70 ms gap) to be sent.
 */
export async function sipJsKeys(page, digits) {
  for (const d of digits) {
    const sent = await page.evaluate((d) => window.phone.session.sessionDescriptionHandler.sendDtmf(d), d);
    assert.equal(sent, true, `sendDtmf('${d}') → ${sent}\n${await pageState(page)}`);
    await sleep(350);
  }
}

/**
 * Records `ms` of what the page receives on its audio track (the first audio receiver of
 * the peer connection at `pcPath`): MediaStreamTrackProcessor when Chromium has it, else
 * WebAudio (a MediaStreamSource into a ScriptProcessor). Chromium only decodes a remote
 * track that something plays out: the page must play it (as Odoo does in an Audio
 * element). Resolves with { rate, samples (Int16Array), via }.
 */
export async function recordRemote(page, ms, pcPath = 'window.phone.session.sessionDescriptionHandler.peerConnection') {
  const got = await page.evaluate(
    async ({ ms, pcPath }) => {
      // eslint-disable-next-line no-eval
      const pc = (0, eval)(pcPath);
      const track = pc.getReceivers().find((r) => r.track?.kind === 'audio')?.track;
      if (!track) throw new Error('no audio receiver track');
      const chunks = [];
      let rate = 0;
      let via;
      if (typeof MediaStreamTrackProcessor === 'function') {
        via = 'MediaStreamTrackProcessor';
        const reader = new MediaStreamTrackProcessor({ track: track.clone() }).readable.getReader();
        const end = Date.now() + ms;
        while (Date.now() < end) {
          // Bounded: a track nothing plays out (no Audio element) delivers no frames.
          const next = await Promise.race([reader.read(), new Promise((r) => setTimeout(() => r({ done: true, timeout: true }), 1000))]);
          if (next.timeout) throw new Error('no audio frame from the remote track for 1 s');
          const { value, done } = next;
          if (done) break;
          const buf = new Float32Array(value.numberOfFrames);
          value.copyTo(buf, { planeIndex: 0, format: 'f32-planar' });
          rate = value.sampleRate;
          value.close();
          chunks.push(buf);
        }
        reader.cancel();
      } else {
        via = 'WebAudio';
        const ctx = new AudioContext();
        await ctx.resume();
        rate = ctx.sampleRate;
        const source = ctx.createMediaStreamSource(new MediaStream([track]));
        const node = ctx.createScriptProcessor(4096, 1, 1);
        node.onaudioprocess = (e) => chunks.push(new Float32Array(e.inputBuffer.getChannelData(0)));
        source.connect(node);
        node.connect(ctx.destination);
        await new Promise((r) => setTimeout(r, ms));
        await ctx.close();
      }
      const total = chunks.reduce((n, c) => n + c.length, 0);
      const pcm = new Int16Array(total);
      let at = 0;
      for (const c of chunks) {
        for (let i = 0; i < c.length; i++) pcm[at++] = Math.max(-32768, Math.min(32767, Math.round(c[i] * 32767)));
      }
      let bin = '';
      const bytes = new Uint8Array(pcm.buffer);
      for (let i = 0; i < bytes.length; i += 0x8000) bin += String.fromCharCode(...bytes.subarray(i, i + 0x8000));
      return { rate, b64: btoa(bin), via };
    },
    { ms, pcPath },
  );
  const buf = Buffer.from(got.b64, 'base64');
  return { rate: got.rate, samples: new Int16Array(buf.buffer, buf.byteOffset, buf.length / 2), via: got.via };
}

/** Waits up to `timeout` ms for `predicate` in the page; on timeout the error carries the page's state and console. */
export async function waitInPage(page, predicate, what, timeout = 10_000) {
  try {
    await page.waitForFunction(predicate, null, { timeout, polling: 100 });
  } catch (err) {
    err.message = `${what}: ${err.message}\n${await pageState(page)}`;
    throw err;
  }
}

/** window.phone (JSON-safe) and the page's console, for failure messages. */
export async function pageState(page) {
  const state = await page
    .evaluate(() =>
      JSON.stringify(window.phone, (k, v) => (['ua', 'registerer', 'session', 'remoteAudio', 'answer'].includes(k) ? undefined : v)),
    )
    .catch((e) => String(e));
  return `--- window.phone ---\n${state}\n--- page console ---\n${(page.consoleLines ?? []).slice(-30).join('\n')}`;
}

/**
 * `who` hears `hz` and none of `notHz` (its own tone, or a party that should be gone) in
 * `samples`, judged per 100 ms window (Goertzel shares, as the Rust tests use over one long
 * window): the tone dominates at least 75 % of the windows and each unwanted tone stays
 * under 5 % on average. Short windows, because both ends adapt their playout to clock
 * drift between Chromium's fake audio devices and the PBX (NetEq accelerates, the PBX's
 * jitter buffer drops or conceals a frame every few seconds under load): each such splice
 * shifts the sine's phase, which cancels a Goertzel taken across it but spoils only the
 * window it falls in. `t`: the test context, for a diagnostic line.
 */
export function assertHears(who, samples, rate, hz, notHz, t) {
  const unwanted = [notHz].flat();
  const size = Math.round(rate / 10);
  const heard = [];
  const others = unwanted.map(() => []);
  for (let i = 0; i + size <= samples.length; i += size) {
    const w = samples.subarray(i, i + size);
    heard.push(toneShare(w, rate, hz));
    unwanted.forEach((f, j) => others[j].push(toneShare(w, rate, f)));
  }
  const mean = (xs) => xs.reduce((a, x) => a + x, 0) / Math.max(1, xs.length);
  const dominant = heard.filter((x) => x > 0.5).length / Math.max(1, heard.length);
  const otherMeans = others.map(mean);
  const summary = `${who} (${rate} Hz, ${heard.length} windows of 100 ms, rms ${rms(samples).toFixed(0)}): ${hz} Hz dominant in ${(dominant * 100).toFixed(0)} % [${heard.map((x) => x.toFixed(2)).join(' ')}], ${unwanted.map((f, j) => `${f} Hz ${otherMeans[j].toFixed(3)}`).join(', ')} on average, whole-span share ${toneShare(samples, rate, hz).toFixed(3)}`;
  t?.diagnostic(summary);
  assert.ok(heard.length >= 20, `enough audio: ${summary}`);
  assert.ok(dominant >= 0.75, `${who} hears ${hz} Hz: ${summary}`);
  unwanted.forEach((f, j) => assert.ok(otherMeans[j] < 0.05, `${who} does not hear ${f} Hz: ${summary}`));
}
