// Unit tests of the map geometry (web/src/geometry.js). Run: node --test web/test/

import assert from 'node:assert/strict';
import { describe, it } from 'node:test';

import { deviceBounds, fromMercator, toMercator } from '../src/geometry.js';

describe('geometry', () => {
  it('mercator round-trips and puts (0, 0) in the middle', () => {
    assert.deepEqual(toMercator(0, 0), { x: 0.5, y: 0.5 });
    for (const [lat, lon] of [[52.52, 13.405], [-33.9, 151.2], [0, -179.9], [85, 180]]) {
      const m = toMercator(lat, lon);
      const back = fromMercator(m.x, m.y);
      assert.ok(Math.abs(back.lat - lat) < 1e-9 && Math.abs(back.lon - lon) < 1e-9);
    }
    assert.ok(toMercator(60, 0).y < toMercator(10, 0).y, 'north is up');
  });

  it('computes device bounds', () => {
    assert.equal(deviceBounds([]), null);
    assert.deepEqual(deviceBounds([{ lat: 1, lon: 5 }, { lat: -2, lon: 7 }]), { south: -2, west: 5, north: 1, east: 7 });
  });
});
