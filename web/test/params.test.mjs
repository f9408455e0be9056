// Unit tests of URL settings and the socket URL (web/src/params.js).

import assert from 'node:assert/strict';
import { describe, it } from 'node:test';

import { DEFAULT_TILES, isValidId, parseParams, randomViewerId, socketUrl } from '../src/params.js';

describe('parseParams', () => {
  it('defaults: group demo, a random viewer id, OpenStreetMap tiles, no token', () => {
    const p = parseParams('');
    assert.deepEqual(p.groups, ['demo']);
    assert.match(p.id, /^viewer-[a-z0-9]{4}$/);
    assert.equal(p.tiles, DEFAULT_TILES);
    assert.match(p.attribution, /OpenStreetMap/);
    assert.equal(p.token, '');
    assert.deepEqual(p.problems, []);
  });

  it('reads groups, id, token and tiles', () => {
    const p = parseParams('?groups=fleet-a,%20fleet-b,,fleet-a&id=wall-1&access_token=abc.def&tiles=none');
    assert.deepEqual(p.groups, ['fleet-a', 'fleet-b']);
    assert.equal(p.id, 'wall-1');
    assert.equal(p.token, 'abc.def');
    assert.equal(p.tiles, null);
  });

  it('takes a custom tile template with its attribution', () => {
    const p = parseParams('?tiles=https://tiles.example/{z}/{x}/{y}.png&attribution=Example');
    assert.equal(p.tiles, 'https://tiles.example/{z}/{x}/{y}.png');
    assert.equal(p.attribution, 'Example');
  });

  it('ignores invalid values and says why', () => {
    const p = parseParams('?groups=ok,bad%20group&id=no%20spaces&tiles=javascript:alert(1)');
    assert.deepEqual(p.groups, ['ok']);
    assert.match(p.id, /^viewer-/);
    assert.equal(p.tiles, DEFAULT_TILES);
    assert.equal(p.problems.length, 3);
  });

  it('falls back to demo when no group is valid', () => {
    assert.deepEqual(parseParams('?groups=%20').groups, ['demo']);
  });

  it('makes viewer ids from the random source', () => {
    assert.equal(randomViewerId(() => 0), 'viewer-aaaa');
  });
});

describe('socketUrl', () => {
  it('without a token: identity in the query, same host, ws on http', () => {
    const url = socketUrl({ protocol: 'http:', host: '127.0.0.1:8080' }, { groups: ['g1', 'g2'], id: 'viewer-1', token: '' });
    assert.equal(url, 'ws://127.0.0.1:8080/v1/ws?role=viewer&id=viewer-1&groups=g1,g2');
  });

  it('with a token: the token added, wss on https', () => {
    const url = socketUrl({ protocol: 'https:', host: 'map.example' }, { groups: ['g'], id: 'v', token: 'a.b-c_d' });
    assert.equal(url, 'wss://map.example/v1/ws?role=viewer&id=v&groups=g&access_token=a.b-c_d');
  });
});

describe('isValidId', () => {
  it('validates ids like the protocol', () => {
    assert.ok(isValidId('bus-17'));
    assert.ok(isValidId('a.b_c:d@e-1'));
    assert.ok(!isValidId(''));
    assert.ok(!isValidId('has space'));
    assert.ok(!isValidId('x'.repeat(65)));
  });
});
