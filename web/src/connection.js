// The viewer's WebSocket: connect, parse JSON frames, ping for RTT, and reconnect with
// exponential backoff and jitter. It knows nothing about the map; it reports through callbacks.
// No DOM: the WebSocket class is a parameter, so `node --test web/test/` drives it with a fake.

export const SUBPROTOCOL = 'beacon.v1.json';
export const PING_INTERVAL_MS = 15000;
const FIRST_PING_DELAY_MS = 1500;
/** No frame at all for this long (pings are answered every 15 s) means the link is dead. */
export const SILENCE_LIMIT_MS = 40000;
/** A connection that stayed up this long resets the backoff to its first step. */
const STABLE_MS = 10000;

/**
 * Delay before reconnect attempt number `attempt` (0 for the first retry): exponential growth
 * from `baseMs`, capped at `maxMs`, with "equal jitter" so that a server restart does not see
 * every browser come back in the same millisecond. The result lies in
 * [min(maxMs, baseMs * 2^attempt) / 2, min(maxMs, baseMs * 2^attempt)].
 */
export function backoffDelay(attempt, { baseMs = 500, maxMs = 30000, random = Math.random } = {}) {
  const n = Math.max(0, Math.floor(Number.isFinite(attempt) ? attempt : 0));
  const ceiling = Math.min(maxMs, baseMs * 2 ** Math.min(n, 30));
  return ceiling / 2 + random() * (ceiling / 2);
}

/**
 * Server clock minus local clock, from a ping sent at local `sentAt`, answered at local
 * `receivedAt` with the server's `serverTime` (assumes a symmetric path).
 */
export function clockOffset(sentAt, receivedAt, serverTime) {
  return serverTime - (sentAt + receivedAt) / 2;
}

/**
 * The server's clock as this page sees it: local time plus an offset learnt from the `welcome`
 * and refined by every `pong`. Ages are computed on it, so a device is not shown as "in 3 min"
 * because this computer's clock is off.
 */
export class ServerClock {
  constructor() {
    /** Server clock minus local clock, in milliseconds. */
    this.offset = 0;
  }

  /** The server's time now, in milliseconds since the epoch. */
  now() {
    return Date.now() + this.offset;
  }
}

/**
 * @typedef {'connecting' | 'live' | 'reconnecting' | 'stopped'} LinkState
 *
 * Callbacks:
 * - `onMessage(msg)` for every parsed server frame;
 * - `onStatus({state, retryAt, attempt, closeCode, reason, opened})` when the link state
 *   changes (`opened` false when a failed attempt never got past the upgrade);
 * - `onRtt({rtt, offset})` on every `pong` that answers our ping.
 */
export class Link {
  constructor({ url, onMessage, onStatus, onRtt, WebSocketImpl = globalThis.WebSocket }) {
    this.url = url;
    this.onMessage = onMessage;
    this.onStatus = onStatus;
    this.onRtt = onRtt;
    this.WebSocketImpl = WebSocketImpl;
    this.ws = null;
    this.attempt = 0;
    this.state = 'stopped';
    this.retryTimer = null;
    this.pingTimer = null;
    this.pingId = 0;
    this.pending = new Map();
    this.lastFrameAt = 0;
    this.openedAt = 0;
    this.frames = 0;
  }

  /** Opens the socket (again). `url` may be a function, called on every attempt. */
  start() {
    this.stopTimers();
    this.closeSocket();
    this.setState({ state: this.attempt === 0 ? 'connecting' : 'reconnecting' });
    this.openedAt = 0;
    const url = typeof this.url === 'function' ? this.url() : this.url;
    let ws;
    try {
      ws = new this.WebSocketImpl(url, SUBPROTOCOL);
    } catch (err) {
      this.scheduleRetry({ reason: String(err && err.message ? err.message : err), opened: false });
      return;
    }
    this.ws = ws;
    ws.onopen = () => {
      this.openedAt = Date.now();
      this.lastFrameAt = this.openedAt;
      this.pingTimer = setInterval(() => this.tick(), 1000);
    };
    ws.onmessage = (ev) => {
      this.lastFrameAt = Date.now();
      this.frames += 1;
      if (typeof ev.data !== 'string') return;
      let msg;
      try {
        msg = JSON.parse(ev.data);
      } catch {
        return;
      }
      if (msg === null || typeof msg !== 'object') return;
      if (msg.type === 'welcome') {
        this.setState({ state: 'live' });
        // The first ping waits until the snapshots are in and the page has settled, so the RTT
        // shown measures the network, not the page's start-up.
        this.lastPingAt = Date.now() - PING_INTERVAL_MS + FIRST_PING_DELAY_MS;
      } else if (msg.type === 'pong') {
        this.handlePong(msg);
      }
      this.onMessage(msg);
    };
    ws.onclose = (ev) => {
      if (this.ws !== ws) return;
      this.ws = null;
      this.stopTimers();
      if (this.state === 'stopped') return;
      if (this.openedAt && Date.now() - this.openedAt > STABLE_MS) this.attempt = 0;
      this.scheduleRetry({ closeCode: ev.code, reason: ev.reason || '', opened: this.openedAt > 0 });
    };
    ws.onerror = () => {
      // Always followed by a close event, which does the work.
    };
  }

  /** Closes the socket for good. */
  stop() {
    this.setState({ state: 'stopped' });
    this.stopTimers();
    this.closeSocket();
  }

  /** Drops the current socket and reconnects at once (new token, new groups). */
  restart() {
    this.attempt = 0;
    this.start();
  }

  send(obj) {
    if (this.ws && this.ws.readyState === 1) {
      this.ws.send(JSON.stringify(obj));
      return true;
    }
    return false;
  }

  tick() {
    const now = Date.now();
    if (now - this.lastFrameAt > SILENCE_LIMIT_MS) {
      // Half-open TCP: nothing will ever arrive. Start over.
      this.closeSocket();
      this.scheduleRetry({ reason: 'no frame for 40 s' });
      return;
    }
    if (this.state === 'live' && now - this.lastPingAt >= PING_INTERVAL_MS) this.sendPing();
  }

  sendPing() {
    this.pingId += 1;
    const sentAt = Date.now();
    this.lastPingAt = sentAt;
    this.pending.set(this.pingId, sentAt);
    if (this.pending.size > 8) this.pending.delete(this.pending.keys().next().value);
    this.send({ type: 'ping', id: this.pingId });
  }

  handlePong(msg) {
    const sentAt = this.pending.get(msg.id);
    if (sentAt === undefined) return;
    this.pending.delete(msg.id);
    const now = Date.now();
    const rtt = now - sentAt;
    const offset = Number.isFinite(msg.server_time) ? clockOffset(sentAt, now, msg.server_time) : undefined;
    if (this.onRtt) this.onRtt({ rtt, offset });
  }

  scheduleRetry({ closeCode, reason, opened = true }) {
    this.stopTimers();
    const delay = backoffDelay(this.attempt);
    this.attempt += 1;
    const retryAt = Date.now() + delay;
    // `opened: false` means the upgrade itself failed: server down, or refused (a browser
    // does not say whether it was 401, 403 or 503).
    this.setState({ state: 'reconnecting', retryAt, closeCode, reason, opened });
    this.retryTimer = setTimeout(() => this.start(), delay);
  }

  setState(info) {
    this.state = info.state;
    if (this.onStatus) this.onStatus({ attempt: this.attempt, ...info });
  }

  stopTimers() {
    clearTimeout(this.retryTimer);
    clearInterval(this.pingTimer);
    this.retryTimer = null;
    this.pingTimer = null;
    this.pending.clear();
    this.lastPingAt = 0;
  }

  closeSocket() {
    const ws = this.ws;
    this.ws = null;
    if (ws) {
      ws.onopen = null;
      ws.onmessage = null;
      ws.onclose = null;
      ws.onerror = null;
      try {
        ws.close(1000);
      } catch {
        // Closing a socket that never opened throws in some browsers; nothing to clean up.
      }
    }
  }
}
