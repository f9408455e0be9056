// Unit tests of the text shown to people (web/src/format.js). Run: node --test web/test/

import assert from 'node:assert/strict';
import { describe, it } from 'node:test';

import { formatAge, speedKmh } from '../src/format.js';

describe('formatting', () => {
  it('formats ages', () => {
    assert.equal(formatAge(0), 'now');
    assert.equal(formatAge(1499), 'now');
    assert.equal(formatAge(12_000), '12 s');
    assert.equal(formatAge(59_400), '59 s');
    assert.equal(formatAge(60_000), '1 min');
    assert.equal(formatAge(59 * 60_000), '59 min');
    assert.equal(formatAge(3 * 3_600_000), '3 h');
    assert.equal(formatAge(3 * 86_400_000), '3 d');
    assert.equal(formatAge(NaN), '–');
  });

  it('converts speed to km/h', () => {
    assert.equal(speedKmh(10), 36);
    assert.equal(speedKmh(8.3), 30);
    assert.equal(speedKmh(0), 0);
    assert.equal(speedKmh(undefined), undefined);
  });
});
