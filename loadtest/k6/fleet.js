// Fleet scenario for k6: a cross-check of beacon-loadtest's `fleet` figures with an
// independent client. Each virtual user is one device: it joins its group over a
// JSON WebSocket, sends a fix once a second and, for every update of another device
// it reads in a `batch`, records receive time − the sender's `ts`.
//
//   BEACON_URL=ws://127.0.0.1:8080 DEVICES=300 GROUP_SIZE=100 DURATION=30s k6 run fleet.js
//
// Environment: BEACON_URL (default ws://127.0.0.1:8080), DEVICES (300),
// GROUP_SIZE (100), DURATION (30s), RATE (fixes per second per device, 1).

import { WebSocket } from 'k6/experimental/websockets';
import { setInterval, setTimeout, clearInterval } from 'k6/timers';
import { Counter, Trend } from 'k6/metrics';

const BASE = (__ENV.BEACON_URL || 'ws://127.0.0.1:8080').replace(/\/+$/, '');
const DEVICES = parseInt(__ENV.DEVICES || '300', 10);
const GROUP_SIZE = parseInt(__ENV.GROUP_SIZE || '100', 10);
const GROUPS = Math.max(1, Math.ceil(DEVICES / GROUP_SIZE));
const DURATION = __ENV.DURATION || '30s';
const RATE = parseFloat(__ENV.RATE || '1');

function toMs(d) {
  const m = /^(\d+(?:\.\d+)?)(ms|s|m)$/.exec(d);
  if (!m) throw new Error(`DURATION must look like 30s, 500ms or 2m, got ${d}`);
  return parseFloat(m[1]) * { ms: 1, s: 1000, m: 60000 }[m[2]];
}
const DURATION_MS = toMs(DURATION);

// Receive time − fix time, for every new fix of another device at every device.
const updateLatency = new Trend('update_latency', true);
// The same, split at the server's receive time `rts` (same clock on one machine):
// sender → server, and server → this device's handler.
const sendToServer = new Trend('send_to_server', true);
const serverToDevice = new Trend('server_to_device', true);
// New fixes of other devices read, summed over devices.
const updatesReceived = new Counter('updates_received');
// The device's own fixes echoed back in its group's batches (not in the latency).
const ownUpdates = new Counter('own_updates');
// Updates repeating a fix already held (e.g. a device announced online again).
const repeatedUpdates = new Counter('repeated_updates');
const fixesSent = new Counter('fixes_sent');
const serverErrors = new Counter('server_errors');

export const options = {
  scenarios: {
    fleet: {
      executor: 'per-vu-iterations',
      vus: DEVICES,
      iterations: 1,
      // The socket closes itself after DURATION; leave room for connecting and closing.
      maxDuration: `${Math.ceil(DURATION_MS / 1000) + 30}s`,
    },
  },
  summaryTrendStats: ['avg', 'med', 'p(90)', 'p(99)', 'max'],
};

export default function () {
  const vu = __VU; // 1-based
  const id = `k6-${vu}`;
  const group = `k6-${vu % GROUPS}`;
  const url = `${BASE}/v1/ws?id=${id}&groups=${group}&role=device`;

  // Latest fix time held per device of the group, to skip repeats like the harness does.
  const held = {};
  // A circle of ~1 km radius, each device starting at its own angle.
  let angle = (vu * 2.399963) % (2 * Math.PI);
  const centerLat = 52.52 + (vu % 10) * 0.001;
  const centerLon = 13.405 + Math.floor(vu / 10) % 10 * 0.001;
  let lastTs = 0;

  const ws = new WebSocket(url, 'beacon.v1.json');
  let ticker = null;

  function sendFix() {
    angle += 0.01; // ~10 m per fix
    let ts = Date.now();
    if (ts <= lastTs) ts = lastTs + 1; // never stamp two fixes alike
    lastTs = ts;
    ws.send(JSON.stringify({
      type: 'pos',
      lat: centerLat + 0.009 * Math.sin(angle),
      lon: centerLon + 0.015 * Math.cos(angle),
      ts: ts,
    }));
    fixesSent.add(1);
  }

  ws.onopen = () => {
    // Start at a random point of the first period so fixes do not arrive in lockstep.
    setTimeout(() => {
      sendFix();
      ticker = setInterval(sendFix, 1000 / RATE);
    }, Math.random() * 1000 / RATE);
    setTimeout(() => {
      if (ticker !== null) clearInterval(ticker);
      ws.close();
    }, DURATION_MS);
  };

  ws.onmessage = (event) => {
    const now = Date.now();
    const msg = JSON.parse(event.data);
    if (msg.type === 'snapshot') {
      for (const d of msg.devices) held[d.id] = d.ts;
    } else if (msg.type === 'batch') {
      for (const u of msg.updates) {
        if (u.id === id) {
          ownUpdates.add(1);
          continue;
        }
        const prev = held[u.id];
        if (prev !== undefined && u.ts <= prev) {
          repeatedUpdates.add(1);
          continue;
        }
        held[u.id] = u.ts;
        updateLatency.add(now - u.ts);
        sendToServer.add(u.rts - u.ts);
        serverToDevice.add(now - u.rts);
        updatesReceived.add(1);
      }
    } else if (msg.type === 'error') {
      serverErrors.add(1);
    }
  };

  ws.onerror = (e) => {
    console.error(`${id}: ${e.error}`);
  };
}
