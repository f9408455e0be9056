// Unit tests of the state model (web/src/model.js). Run: node --test web/test/

import assert from 'node:assert/strict';
import { describe, it } from 'node:test';

import { toMercator } from '../src/geometry.js';
import {
  DEFAULT_TRAIL_LENGTH,
  GLIDE_MAX_MS,
  applyBatch,
  applySnapshot,
  countOnline,
  createState,
  filterDevices,
  glidePosition,
  isGliding,
  lastSeen,
  retainGroups,
  sortDevices,
} from '../src/model.js';

const T = 1_763_780_000_000;

function rec(id, lat, lon, ts, extra = {}) {
  return { id, lat, lon, ts, rts: ts + 3, online: true, ...extra };
}

function ids(state) {
  return [...state.devices.keys()].sort();
}

describe('snapshot', () => {
  it('fills an empty state with the group devices, fields included', () => {
    const s = createState();
    applySnapshot(s, { type: 'snapshot', group: 'g', devices: [rec('a', 52.5, 13.4, T, { spd: 8.3, batt: 77 }), rec('b', 48.1, 11.5, T, { online: false })] }, 0);
    assert.deepEqual(ids(s), ['a', 'b']);
    const a = s.devices.get('a');
    assert.equal(a.lat, 52.5);
    assert.equal(a.lon, 13.4);
    assert.equal(a.spd, 8.3);
    assert.equal(a.batt, 77);
    assert.equal(a.online, true);
    assert.equal(s.devices.get('b').online, false);
    assert.deepEqual([...a.groups], ['g']);
  });

  it('replaces the state of its group: devices not listed are dropped', () => {
    const s = createState();
    applySnapshot(s, { group: 'g', devices: [rec('a', 1, 1, T), rec('b', 2, 2, T), rec('c', 3, 3, T)] }, 0);
    applySnapshot(s, { group: 'g', devices: [rec('b', 2.5, 2.5, T + 1000)] }, 100);
    assert.deepEqual(ids(s), ['b']);
    assert.equal(s.devices.get('b').lat, 2.5);
  });

  it('leaves other groups alone and keeps a device that is still in another group', () => {
    const s = createState();
    applySnapshot(s, { group: 'g1', devices: [rec('a', 1, 1, T), rec('shared', 5, 5, T)] }, 0);
    applySnapshot(s, { group: 'g2', devices: [rec('x', 9, 9, T), rec('shared', 5, 5, T)] }, 0);
    applySnapshot(s, { group: 'g1', devices: [] }, 10);
    assert.deepEqual(ids(s), ['shared', 'x']);
    assert.deepEqual([...s.devices.get('shared').groups], ['g2']);
  });

  it('an empty snapshot clears its group', () => {
    const s = createState();
    applySnapshot(s, { group: 'g', devices: [rec('a', 1, 1, T)] }, 0);
    applySnapshot(s, { group: 'g', devices: [] }, 0);
    assert.equal(s.devices.size, 0);
  });

  it('skips records without a usable position', () => {
    const s = createState();
    applySnapshot(s, { group: 'g', devices: [{ id: 'a', lat: 'x', lon: 1 }, { id: 'b', lat: 91, lon: 0 }, { lat: 1, lon: 1 }, rec('ok', 1, 1, T)] }, 0);
    assert.deepEqual(ids(s), ['ok']);
  });
});

describe('batch', () => {
  it('merges updates: new devices appear, known ones move, others stay', () => {
    const s = createState();
    applySnapshot(s, { group: 'g', devices: [rec('a', 1, 1, T), rec('b', 2, 2, T)] }, 0);
    applyBatch(s, { group: 'g', updates: [rec('a', 1.5, 1.5, T + 1000), rec('c', 3, 3, T + 1000)], offline: [] }, 1000);
    assert.deepEqual(ids(s), ['a', 'b', 'c']);
    assert.equal(s.devices.get('a').lat, 1.5);
    assert.equal(s.devices.get('a').ts, T + 1000);
    assert.equal(s.devices.get('b').lat, 2);
    assert.equal(s.devices.get('c').online, true);
  });

  it('keeps the latest fix per device when several arrive', () => {
    const s = createState();
    applyBatch(s, { group: 'g', updates: [rec('a', 1, 1, T + 2000)], offline: [] }, 0);
    applyBatch(s, { group: 'g', updates: [rec('a', 2, 2, T + 3000)], offline: [] }, 100);
    assert.equal(s.devices.get('a').lat, 2);
  });

  it('ignores a fix older than the one held', () => {
    const s = createState();
    applyBatch(s, { group: 'g', updates: [rec('a', 10, 10, T + 5000, { spd: 5 })], offline: [] }, 0);
    const before = s.updates;
    applyBatch(s, { group: 'g2', updates: [rec('a', -10, -10, T + 4000, { spd: 99 })], offline: [] }, 100);
    const a = s.devices.get('a');
    assert.equal(a.lat, 10);
    assert.equal(a.lon, 10);
    assert.equal(a.spd, 5);
    assert.equal(a.ts, T + 5000);
    assert.equal(s.updates, before, 'an ignored fix is not counted');
    assert.equal(a.trail.length, 1, 'an ignored fix does not extend the trail');
  });

  it('keeps optional fields: new values replace, absent ones keep the last known value', () => {
    const s = createState();
    applyBatch(s, { group: 'g', updates: [rec('a', 1, 1, T, { acc: 5, alt: 40, spd: 3, hdg: 270, batt: 81 })], offline: [] }, 0);
    let a = s.devices.get('a');
    assert.deepEqual([a.acc, a.alt, a.spd, a.hdg, a.batt], [5, 40, 3, 270, 81]);
    applyBatch(s, { group: 'g', updates: [rec('a', 1.1, 1, T + 1000, { spd: 4, hdg: 0 })], offline: [] }, 1000);
    a = s.devices.get('a');
    assert.equal(a.spd, 4);
    assert.equal(a.hdg, 0, 'a heading of 0 (north) is a value, not an absence');
    assert.equal(a.batt, 81);
    assert.equal(a.acc, 5);
    assert.equal(a.alt, 40);
  });

  it('leaves optional fields undefined when never sent', () => {
    const s = createState();
    applyBatch(s, { group: 'g', updates: [rec('a', 1, 1, T)], offline: [] }, 0);
    const a = s.devices.get('a');
    assert.equal(a.hdg, undefined);
    assert.equal(a.batt, undefined);
    assert.equal(a.spd, undefined);
  });

  it('offline marks online:false but keeps the position and fields', () => {
    const s = createState();
    applySnapshot(s, { group: 'g', devices: [rec('a', 52.5, 13.4, T, { batt: 50 }), rec('b', 1, 1, T)] }, 0);
    applyBatch(s, { group: 'g', updates: [], offline: ['a', 'unknown-id'] }, 500);
    const a = s.devices.get('a');
    assert.equal(a.online, false);
    assert.equal(a.lat, 52.5);
    assert.equal(a.lon, 13.4);
    assert.equal(a.batt, 50);
    assert.equal(s.devices.get('b').online, true);
    assert.equal(s.devices.has('unknown-id'), false, 'an unknown offline id creates nothing');
  });

  it('a device that reports again after going offline is online again', () => {
    const s = createState();
    applyBatch(s, { group: 'g', updates: [rec('a', 1, 1, T)], offline: [] }, 0);
    applyBatch(s, { group: 'g', updates: [], offline: ['a'] }, 100);
    applyBatch(s, { group: 'g', updates: [rec('a', 1.2, 1, T + 9000)], offline: [] }, 200);
    assert.equal(s.devices.get('a').online, true);
  });

  it('tolerates missing lists', () => {
    const s = createState();
    applyBatch(s, { group: 'g' }, 0);
    applySnapshot(s, { group: 'g' }, 0);
    assert.equal(s.devices.size, 0);
  });

  it('takes a fix without ts as "now"', () => {
    const s = createState();
    applyBatch(s, { group: 'g', updates: [{ id: 'a', lat: 1, lon: 2, online: true }], offline: [] }, 1234);
    assert.equal(s.devices.get('a').ts, 1234);
  });
});

describe('resync after reconnect', () => {
  it('snapshots on reconnect replace what was held: moved, gone, offline, new', () => {
    const s = createState();
    applySnapshot(s, { group: 'fleet', devices: [rec('a', 1, 1, T), rec('b', 2, 2, T), rec('c', 3, 3, T)] }, 0);
    applyBatch(s, { group: 'fleet', updates: [rec('a', 1.1, 1.1, T + 1000)], offline: [] }, 1000);
    // The socket drops; while away: a moves on, b leaves the retention window, c goes
    // offline, d joins. The new connection starts with welcome + snapshot.
    retainGroups(s, ['fleet']);
    applySnapshot(
      s,
      { group: 'fleet', devices: [rec('a', 1.9, 1.9, T + 60000), rec('c', 3, 3, T, { online: false }), rec('d', 4, 4, T + 59000)] },
      61000,
    );
    assert.deepEqual(ids(s), ['a', 'c', 'd']);
    assert.equal(s.devices.get('a').lat, 1.9);
    assert.equal(s.devices.get('c').online, false);
    assert.equal(s.devices.get('d').online, true);
    // The trail of a device that stayed continues across the gap.
    assert.equal(s.devices.get('a').trail.length, 3);
  });

  it('a welcome with fewer groups forgets the devices of the groups no longer watched', () => {
    const s = createState();
    applySnapshot(s, { group: 'g1', devices: [rec('a', 1, 1, T)] }, 0);
    applySnapshot(s, { group: 'g2', devices: [rec('b', 1, 1, T), rec('both', 1, 1, T)] }, 0);
    applySnapshot(s, { group: 'g1', devices: [rec('a', 1, 1, T), rec('both', 1, 1, T)] }, 0);
    retainGroups(s, ['g1']);
    assert.deepEqual(ids(s), ['a', 'both']);
  });

  it('a snapshot older than a held fix keeps the newer position but takes liveness', () => {
    const s = createState();
    applyBatch(s, { group: 'g1', updates: [rec('a', 5, 5, T + 10000)], offline: [] }, 0);
    applySnapshot(s, { group: 'g2', devices: [rec('a', 4, 4, T + 9000, { online: false })] }, 10);
    const a = s.devices.get('a');
    assert.equal(a.lat, 5);
    assert.equal(a.online, false);
    assert.deepEqual([...a.groups].sort(), ['g1', 'g2']);
  });
});

describe('trail', () => {
  it('is bounded to the trail length, newest last', () => {
    const s = createState();
    for (let i = 0; i < 50; i += 1) {
      applyBatch(s, { group: 'g', updates: [rec('a', 10 + i * 0.001, 20, T + i * 1000)], offline: [] }, i * 1000);
    }
    const a = s.devices.get('a');
    assert.equal(a.trail.length, DEFAULT_TRAIL_LENGTH);
    const newest = a.trail[a.trail.length - 1];
    const expected = toMercator(10 + 49 * 0.001, 20);
    assert.ok(Math.abs(newest.y - expected.y) < 1e-12);
    const oldest = a.trail[0];
    assert.ok(Math.abs(oldest.y - toMercator(10 + 30 * 0.001, 20).y) < 1e-12);
  });

  it('honours a custom length and skips repeated positions', () => {
    const s = createState({ trailLength: 3 });
    for (let i = 0; i < 5; i += 1) applyBatch(s, { group: 'g', updates: [rec('a', i, 0, T + i)], offline: [] }, i);
    applyBatch(s, { group: 'g', updates: [rec('a', 4, 0, T + 10)], offline: [] }, 10);
    assert.equal(s.devices.get('a').trail.length, 3);
  });
});

describe('glide', () => {
  it('moves from the previous fix to the new one over the interval between fixes', () => {
    const s = createState();
    applyBatch(s, { group: 'g', updates: [rec('a', 0, 0, T)], offline: [] }, 0);
    applyBatch(s, { group: 'g', updates: [rec('a', 0, 0.01, T + 1000)], offline: [] }, 1000);
    const a = s.devices.get('a');
    const start = toMercator(0, 0);
    const end = toMercator(0, 0.01);
    assert.ok(isGliding(a, 1500));
    const mid = glidePosition(a, 1500);
    assert.ok(Math.abs(mid.x - (start.x + end.x) / 2) < 1e-12);
    const done = glidePosition(a, 1000 + GLIDE_MAX_MS + 1);
    assert.equal(done.x, end.x);
    assert.equal(isGliding(a, 1000 + GLIDE_MAX_MS + 1), false);
  });

  it('jumps instead of gliding across a long distance', () => {
    const s = createState();
    applyBatch(s, { group: 'g', updates: [rec('a', 0, 0, T)], offline: [] }, 0);
    applyBatch(s, { group: 'g', updates: [rec('a', 10, 10, T + 1000)], offline: [] }, 1000);
    const a = s.devices.get('a');
    assert.equal(isGliding(a, 1001), false);
    assert.deepEqual(glidePosition(a, 1001), toMercator(10, 10));
  });

  it('a first fix is drawn where it is', () => {
    const s = createState();
    applyBatch(s, { group: 'g', updates: [rec('a', 3, 4, T)], offline: [] }, 0);
    assert.deepEqual(glidePosition(s.devices.get('a'), 0), toMercator(3, 4));
  });
});

describe('panel: filter and sort', () => {
  const devs = [
    { id: 'car-10', online: true, ts: 5 },
    { id: 'car-2', online: false, ts: 9 },
    { id: 'Bus-1', online: true, ts: 7 },
    { id: 'truck-7', online: false, ts: 1 },
  ];

  it('filters by id, case-insensitive, trimmed; an empty query keeps all', () => {
    assert.deepEqual(filterDevices(devs, 'CAR').map((d) => d.id), ['car-10', 'car-2']);
    assert.deepEqual(filterDevices(devs, '  bus ').map((d) => d.id), ['Bus-1']);
    assert.deepEqual(filterDevices(devs, 'nothing'), []);
    assert.equal(filterDevices(devs, '').length, 4);
    assert.equal(filterDevices(new Map(devs.map((d) => [d.id, d])).values(), '-1').length, 2);
  });

  it('sorts online first then by id in reading order', () => {
    assert.deepEqual(sortDevices([...devs]).map((d) => d.id), ['Bus-1', 'car-10', 'car-2', 'truck-7']);
  });

  it('sorts by id with numbers in numeric order', () => {
    assert.deepEqual(sortDevices([...devs], 'id').map((d) => d.id), ['Bus-1', 'car-2', 'car-10', 'truck-7']);
  });

  it('sorts by last seen (server receive time)', () => {
    const seen = devs.map((d) => ({ ...d, rts: d.ts }));
    seen[3].rts = 100; // truck-7: an old fix (ts 1) received just now
    assert.deepEqual(sortDevices(seen, 'recent').map((d) => d.id), ['truck-7', 'car-2', 'Bus-1', 'car-10']);
  });

  it('last seen is the receive time, the fix time when there is none', () => {
    const s = createState();
    applyBatch(s, { group: 'g', updates: [rec('a', 1, 1, T)], offline: [] }, 0);
    assert.equal(lastSeen(s.devices.get('a')), T + 3);
    applyBatch(s, { group: 'g', updates: [{ id: 'b', lat: 1, lon: 1, ts: T + 50, online: true }], offline: [] }, 0);
    assert.equal(lastSeen(s.devices.get('b')), T + 50);
  });

  it('shape changes with membership and liveness, not with moves', () => {
    const s = createState();
    applyBatch(s, { group: 'g', updates: [rec('a', 1, 1, T)], offline: [] }, 0);
    const afterAdd = s.shape;
    assert.ok(afterAdd > 0);
    applyBatch(s, { group: 'g', updates: [rec('a', 1.1, 1, T + 1000)], offline: [] }, 1000);
    assert.equal(s.shape, afterAdd, 'a move keeps the shape');
    applyBatch(s, { group: 'g', updates: [], offline: ['a'] }, 2000);
    assert.ok(s.shape > afterAdd, 'going offline changes it');
    const afterOffline = s.shape;
    applySnapshot(s, { group: 'g', devices: [] }, 3000);
    assert.ok(s.shape > afterOffline, 'leaving changes it');
  });

  it('counts online and offline', () => {
    assert.deepEqual(countOnline(devs), { online: 2, offline: 2, total: 4 });
  });
});
