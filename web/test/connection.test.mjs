// Unit tests of the viewer socket (web/src/connection.js) with a fake WebSocket and fake timers,
// and of its timing: reconnect delays and the server clock offset.

import assert from 'node:assert/strict';
import { afterEach, beforeEach, describe, it, mock } from 'node:test';

import {
  Link,
  PING_INTERVAL_MS,
  SILENCE_LIMIT_MS,
  SUBPROTOCOL,
  backoffDelay,
  clockOffset,
} from '../src/connection.js';

class FakeSocket {
  static all = [];

  constructor(url, protocol) {
    this.url = url;
    this.protocol = protocol;
    this.readyState = 0;
    this.sent = [];
    this.closedWith = null;
    FakeSocket.all.push(this);
  }

  send(data) {
    this.sent.push(JSON.parse(data));
  }

  close(code) {
    this.closedWith = code;
    this.readyState = 3;
  }

  // Test side: what the server does.
  open() {
    this.readyState = 1;
    this.onopen?.();
  }

  receive(msg) {
    this.onmessage?.({ data: JSON.stringify(msg) });
  }

  drop(code = 1006) {
    this.readyState = 3;
    this.onclose?.({ code, reason: '' });
  }
}

const welcome = { type: 'welcome', session: 's', id: 'v', role: 'viewer', groups: ['g'], server_time: 0, tick_ms: 100 };

function makeLink() {
  const statuses = [];
  const messages = [];
  const rtts = [];
  const link = new Link({
    url: () => `ws://h/v1/ws?n=${FakeSocket.all.length}`,
    onMessage: (m) => messages.push(m),
    onStatus: (s) => statuses.push(s),
    onRtt: (r) => rtts.push(r),
    WebSocketImpl: FakeSocket,
  });
  return { link, statuses, messages, rtts };
}

describe('Link', () => {
  beforeEach(() => {
    FakeSocket.all = [];
    mock.timers.enable({ apis: ['setTimeout', 'setInterval', 'Date'], now: 1_000_000 });
  });
  afterEach(() => mock.timers.reset());

  it('connects with the JSON subprotocol and goes live on welcome', () => {
    const { link, statuses, messages } = makeLink();
    link.start();
    const ws = FakeSocket.all[0];
    assert.equal(ws.protocol, SUBPROTOCOL);
    assert.equal(statuses.at(-1).state, 'connecting');
    ws.open();
    assert.equal(link.state, 'connecting', 'open is not live until the welcome');
    ws.receive(welcome);
    assert.equal(statuses.at(-1).state, 'live');
    ws.receive({ type: 'snapshot', group: 'g', devices: [] });
    assert.deepEqual(messages.map((m) => m.type), ['welcome', 'snapshot']);
    link.stop();
  });

  it('pings every 15 s and reports the RTT from the matching pong', () => {
    const { link, rtts } = makeLink();
    link.start();
    const ws = FakeSocket.all[0];
    ws.open();
    ws.receive(welcome);
    mock.timers.tick(2000);
    const first = ws.sent.filter((m) => m.type === 'ping');
    assert.equal(first.length, 1, 'a first ping soon after the welcome');
    mock.timers.tick(40);
    ws.receive({ type: 'pong', id: first[0].id, server_time: Date.now() + 5000 });
    assert.equal(rtts.length, 1);
    assert.equal(rtts[0].rtt, 40);
    assert.ok(Math.abs(rtts[0].offset - 5020) <= 1);
    ws.receive({ type: 'pong', id: 999, server_time: 0 });
    assert.equal(rtts.length, 1, 'an unknown pong id is ignored');
    mock.timers.tick(PING_INTERVAL_MS);
    assert.equal(ws.sent.filter((m) => m.type === 'ping').length, 2);
    link.stop();
  });

  it('reconnects with growing, jittered delays and starts over once live for a while', () => {
    const { link, statuses } = makeLink();
    link.start();
    const delays = [];
    for (let attempt = 0; attempt < 6; attempt += 1) {
      const ws = FakeSocket.all.at(-1);
      ws.drop();
      const s = statuses.at(-1);
      assert.equal(s.state, 'reconnecting');
      assert.equal(s.closeCode, 1006);
      const delay = s.retryAt - Date.now();
      const ceiling = Math.min(30000, 500 * 2 ** attempt);
      assert.ok(delay >= ceiling / 2 && delay <= ceiling, `attempt ${attempt}: ${delay} ms`);
      delays.push(delay);
      const before = FakeSocket.all.length;
      mock.timers.tick(delay - 1);
      assert.equal(FakeSocket.all.length, before, 'no new socket before the delay');
      mock.timers.tick(1);
      assert.equal(FakeSocket.all.length, before + 1, 'a new socket after the delay');
    }
    assert.ok(delays.at(-1) > delays[0] * 8, `delays grow: ${delays}`);
    // A connection that stays up resets the backoff.
    const ws = FakeSocket.all.at(-1);
    ws.open();
    ws.receive(welcome);
    mock.timers.tick(20000);
    ws.drop();
    const delay = statuses.at(-1).retryAt - Date.now();
    assert.ok(delay <= 500, `back to the first step: ${delay} ms`);
    link.stop();
  });

  it('tells a refused upgrade from a dropped connection', () => {
    const { link, statuses } = makeLink();
    link.start();
    FakeSocket.all[0].drop();
    assert.equal(statuses.at(-1).opened, false, 'never opened: refused or unreachable');
    mock.timers.tick(statuses.at(-1).retryAt - Date.now());
    const ws = FakeSocket.all[1];
    ws.open();
    ws.receive(welcome);
    ws.drop(1001);
    assert.equal(statuses.at(-1).opened, true);
    assert.equal(statuses.at(-1).closeCode, 1001);
    link.stop();
  });

  it('treats a silent link as dead and reconnects', () => {
    const { link, statuses } = makeLink();
    link.start();
    const ws = FakeSocket.all[0];
    ws.open();
    ws.receive(welcome);
    // Pongs never come back and nothing else arrives.
    mock.timers.tick(SILENCE_LIMIT_MS + 1500);
    assert.equal(statuses.at(-1).state, 'reconnecting');
    assert.equal(ws.closedWith, 1000, 'the dead socket is closed');
    link.stop();
  });

  it('stop() closes the socket and does not reconnect', () => {
    const { link } = makeLink();
    link.start();
    const ws = FakeSocket.all[0];
    ws.open();
    link.stop();
    assert.equal(ws.closedWith, 1000);
    mock.timers.tick(120000);
    assert.equal(FakeSocket.all.length, 1);
    assert.equal(link.state, 'stopped');
  });

  it('restart() reconnects at once with a fresh URL (new token)', () => {
    const { link } = makeLink();
    link.start();
    FakeSocket.all[0].open();
    link.restart();
    assert.equal(FakeSocket.all.length, 2);
    assert.equal(FakeSocket.all[0].closedWith, 1000);
    assert.notEqual(FakeSocket.all[1].url, FakeSocket.all[0].url);
    link.stop();
  });

  it('ignores frames that are not JSON objects', () => {
    const { link, messages } = makeLink();
    link.start();
    const ws = FakeSocket.all[0];
    ws.open();
    ws.onmessage({ data: 'not json' });
    ws.onmessage({ data: '42' });
    ws.onmessage({ data: new ArrayBuffer(4) });
    assert.equal(messages.length, 0);
    link.stop();
  });
});

describe('backoff', () => {
  it('stays within [ceiling/2, ceiling] and grows exponentially to the cap', () => {
    const opts = { baseMs: 500, maxMs: 30000 };
    for (let attempt = 0; attempt < 20; attempt += 1) {
      const ceiling = Math.min(30000, 500 * 2 ** attempt);
      const lo = backoffDelay(attempt, { ...opts, random: () => 0 });
      const hi = backoffDelay(attempt, { ...opts, random: () => 0.999999 });
      assert.equal(lo, ceiling / 2, `attempt ${attempt} low`);
      assert.ok(hi <= ceiling && hi > ceiling * 0.99, `attempt ${attempt} high ${hi}`);
      for (let k = 0; k < 50; k += 1) {
        const d = backoffDelay(attempt, opts);
        assert.ok(d >= ceiling / 2 && d <= ceiling, `attempt ${attempt}: ${d}`);
      }
    }
    assert.equal(backoffDelay(0, { random: () => 0 }), 250);
    assert.equal(backoffDelay(3, { random: () => 0 }), 2000);
    assert.equal(backoffDelay(1000, { random: () => 1 }), 30000);
  });

  it('jitters: delays of one attempt are not all equal', () => {
    const seen = new Set();
    for (let k = 0; k < 20; k += 1) seen.add(backoffDelay(4));
    assert.ok(seen.size > 1);
  });

  it('treats bad attempts as the first', () => {
    assert.equal(backoffDelay(-3, { random: () => 0 }), 250);
    assert.equal(backoffDelay(NaN, { random: () => 0 }), 250);
  });
});

describe('server clock', () => {
  it('estimates the server clock offset from a ping', () => {
    assert.equal(clockOffset(1000, 1100, 5050), 4000);
  });
});
