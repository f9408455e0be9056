// Shared helpers of the browser checks (test/e2e.mjs, test/fps.mjs, tools/screenshot.mjs):
// start the real server binary on a free loopback port, launch headless Chromium with a fresh
// profile, and connect simulated devices. Everything started here is stopped by its own handle.

import { spawn } from 'node:child_process';
import { mkdtemp, rm } from 'node:fs/promises';
import { createServer } from 'node:net';
import { tmpdir } from 'node:os';
import { dirname, isAbsolute, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { chromium } from 'playwright-core';
import WebSocket from 'ws';

export const webDir = resolve(dirname(fileURLToPath(import.meta.url)), '..');
export const repoRoot = resolve(webDir, '..');

export const CHROMIUM = process.env.CHROMIUM_PATH || '/usr/bin/chromium';
export const CHROMIUM_ARGS = [
  '--headless',
  '--no-sandbox',
  '--disable-gpu',
  '--disable-quic',
  '--no-first-run',
  '--disable-background-networking',
  '--disable-component-update',
  '--disable-sync',
];

/** The server binary: `$BEACON_BIN`, or `target/debug/beacon` under the repository root. */
export function serverBinary() {
  const bin = process.env.BEACON_BIN || 'target/debug/beacon';
  return isAbsolute(bin) ? bin : resolve(repoRoot, bin);
}

/** A TCP port free on 127.0.0.1 right now. */
export function freePort() {
  return new Promise((ok, fail) => {
    const srv = createServer();
    srv.unref();
    srv.on('error', fail);
    srv.listen(0, '127.0.0.1', () => {
      const { port } = srv.address();
      srv.close(() => ok(port));
    });
  });
}

export const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

/** Polls `check` until it returns a truthy value or `ms` pass; returns that value or throws. */
export async function waitFor(what, check, { ms = 10000, every = 100 } = {}) {
  const deadline = Date.now() + ms;
  let last;
  for (;;) {
    try {
      last = await check();
      if (last) return last;
    } catch (err) {
      last = err;
    }
    if (Date.now() > deadline) {
      const detail = last instanceof Error ? `: ${last.message}` : last !== undefined ? ` (last: ${JSON.stringify(last)})` : '';
      throw new Error(`timed out after ${ms} ms waiting for ${what}${detail}`);
    }
    await sleep(every);
  }
}

/**
 * Starts `BIN serve --listen 127.0.0.1:PORT [...extra]` and waits for `GET /healthz` = 200.
 * PORT is a free one unless `port` is given (to restart a server where it was).
 * Returns `{base, port, pid, stop(), output()}`; `stop()` kills the process by its pid.
 */
export async function startServer(extra = [], { readyMs = 20000, port: fixedPort } = {}) {
  const bin = serverBinary();
  const port = fixedPort || (await freePort());
  const args = ['serve', '--listen', `127.0.0.1:${port}`, ...extra];
  const proc = spawn(bin, args, {
    cwd: repoRoot,
    stdio: ['ignore', 'pipe', 'pipe'],
    env: { ...process.env, RUST_LOG: process.env.RUST_LOG || 'warn' },
  });
  let log = '';
  const keep = (chunk) => {
    log += chunk;
    if (log.length > 64 * 1024) log = log.slice(-32 * 1024);
  };
  proc.stdout.on('data', keep);
  proc.stderr.on('data', keep);
  let exited = null;
  const exit = new Promise((r) =>
    proc.on('exit', (code, signal) => {
      exited = { code, signal };
      r();
    }),
  );
  proc.on('error', (err) => {
    exited = { error: err.message };
  });
  // If this script dies without calling stop() (an uncaught error, a closed stdout), the
  // server must not outlive it.
  const reap = () => {
    if (!exited) {
      try {
        process.kill(proc.pid, 'SIGKILL');
      } catch {
        // Already gone.
      }
    }
  };
  process.on('exit', reap);
  const base = `http://127.0.0.1:${port}`;
  const server = {
    base,
    port,
    pid: proc.pid,
    output: () => log,
    async stop() {
      if (exited) return;
      try {
        process.kill(proc.pid, 'SIGTERM');
      } catch {
        return;
      }
      const timer = setTimeout(() => {
        if (!exited) {
          try {
            process.kill(proc.pid, 'SIGKILL');
          } catch {
            // Already gone.
          }
        }
      }, 5000);
      await exit;
      clearTimeout(timer);
      process.off('exit', reap);
    },
  };
  try {
    await waitFor(`${bin} to answer /healthz`, async () => {
      if (exited) throw new Error(`server exited early ${JSON.stringify(exited)}\n${log}`);
      const res = await fetch(`${base}/healthz`).catch(() => null);
      return res !== null && res.status === 200;
    }, { ms: readyMs });
  } catch (err) {
    await server.stop();
    throw err;
  }
  return server;
}

/** Headless Chromium with a fresh profile. Returns `{context, page, close()}`. */
export async function launchBrowser({ width = 1360, height = 820, scale = 1 } = {}) {
  const profile = await mkdtemp(join(tmpdir(), 'beacon-chromium-'));
  const context = await chromium.launchPersistentContext(profile, {
    executablePath: CHROMIUM,
    headless: true,
    args: CHROMIUM_ARGS,
    viewport: { width, height },
    deviceScaleFactor: scale,
  });
  const page = context.pages()[0] || (await context.newPage());
  return {
    context,
    page,
    async close() {
      await context.close().catch(() => {});
      await rm(profile, { recursive: true, force: true });
    },
  };
}

/**
 * A device: a WebSocket as `role=device` in `groups`. Resolves once the `welcome` arrived.
 * `send(fix)` publishes a `pos`; `messages` collects what the server sent.
 */
export function connectDevice(base, id, groups) {
  const url = `${base.replace(/^http/, 'ws')}/v1/ws?id=${encodeURIComponent(id)}&groups=${groups}&role=device`;
  return new Promise((ok, fail) => {
    const ws = new WebSocket(url, 'beacon.v1.json');
    const dev = {
      id,
      ws,
      messages: [],
      errors: [],
      send(fix) {
        ws.send(JSON.stringify({ type: 'pos', ...fix }));
      },
      close() {
        return new Promise((done) => {
          if (ws.readyState === WebSocket.CLOSED) return done();
          ws.once('close', () => done());
          ws.close(1000);
        });
      },
    };
    const timer = setTimeout(() => {
      ws.terminate();
      fail(new Error(`device ${id}: no welcome within 10 s`));
    }, 10000);
    ws.on('message', (data) => {
      let msg;
      try {
        msg = JSON.parse(String(data));
      } catch {
        return;
      }
      if (msg.type === 'error') dev.errors.push(msg);
      if (dev.messages.length < 50) dev.messages.push(msg);
      if (msg.type === 'welcome') {
        clearTimeout(timer);
        ok(dev);
      }
    });
    ws.on('unexpected-response', (_req, res) => {
      clearTimeout(timer);
      fail(new Error(`device ${id}: upgrade refused with HTTP ${res.statusCode}`));
    });
    ws.on('error', (err) => {
      clearTimeout(timer);
      fail(new Error(`device ${id}: ${err.message}`));
    });
  });
}

/** Reads `window.beaconStats` from the page. */
export function stats(page) {
  return page.evaluate(() => ({ ...window.beaconStats }));
}
