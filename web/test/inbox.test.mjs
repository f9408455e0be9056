// Unit tests of the inbox (web/src/inbox.js): messages coalesced until the next frame, then
// applied to the state model. Run: node --test web/test/

import assert from 'node:assert/strict';
import { describe, it } from 'node:test';

import { createInbox, inboxClear, inboxDrain, inboxPush } from '../src/inbox.js';
import { createState } from '../src/model.js';

const T = 1_763_780_000_000;

function rec(id, lat, lon, ts, extra = {}) {
  return { id, lat, lon, ts, rts: ts + 3, online: true, ...extra };
}

function ids(state) {
  return [...state.devices.keys()].sort();
}

describe('inbox: batches coalesced until the next frame', () => {
  it('keeps the latest fix per device across batches and applies them once', () => {
    const inbox = createInbox();
    for (let i = 0; i < 100; i += 1) {
      inboxPush(inbox, { type: 'batch', group: 'g', updates: [rec('a', i * 0.001, 0, T + i * 100), rec(`d${i % 5}`, 1, i * 0.001, T + i * 100)], offline: [] });
    }
    assert.equal(inbox.entries.length, 1, 'one merged batch per group');
    assert.equal(inbox.entries[0].updates.size, 6, 'one update per device');
    const s = createState();
    assert.equal(inboxDrain(inbox, s, 0), 100);
    assert.equal(s.devices.get('a').lat, 0.099);
    assert.equal(s.updates, 6);
    assert.equal(inbox.entries.length, 0);
    assert.equal(inboxDrain(inbox, s, 1), 0, 'nothing left');
  });

  it('does not let an older fix in a later batch win', () => {
    const inbox = createInbox();
    inboxPush(inbox, { type: 'batch', group: 'g', updates: [rec('a', 2, 2, T + 2000)], offline: [] });
    inboxPush(inbox, { type: 'batch', group: 'g', updates: [rec('a', 1, 1, T + 1000)], offline: [] });
    const s = createState();
    inboxDrain(inbox, s, 0);
    assert.equal(s.devices.get('a').lat, 2);
  });

  it('orders offline and fixes like the messages did', () => {
    const inbox = createInbox();
    const s = createState();
    // Fix, then offline: offline.
    inboxPush(inbox, { type: 'batch', group: 'g', updates: [rec('a', 1, 1, T), rec('b', 1, 1, T)], offline: [] });
    inboxPush(inbox, { type: 'batch', group: 'g', updates: [], offline: ['a', 'b'] });
    // b comes back with a new fix: online.
    inboxPush(inbox, { type: 'batch', group: 'g', updates: [rec('b', 1.5, 1, T + 5000)], offline: [] });
    inboxDrain(inbox, s, 0);
    assert.equal(s.devices.get('a').online, false);
    assert.equal(s.devices.get('b').online, true);
    assert.equal(s.devices.get('b').lat, 1.5);
  });

  it('a snapshot supersedes what was waiting for its group only', () => {
    const inbox = createInbox();
    inboxPush(inbox, { type: 'batch', group: 'g', updates: [rec('gone', 1, 1, T)], offline: [] });
    inboxPush(inbox, { type: 'batch', group: 'other', updates: [rec('x', 1, 1, T)], offline: [] });
    inboxPush(inbox, { type: 'snapshot', group: 'g', devices: [rec('a', 1, 1, T)] });
    inboxPush(inbox, { type: 'batch', group: 'g', updates: [rec('a', 2, 2, T + 1000)], offline: [] });
    assert.deepEqual(inbox.entries.map((e) => `${e.group}:${e.kind}`), ['other:batch', 'g:snapshot', 'g:batch']);
    const s = createState();
    inboxDrain(inbox, s, 0);
    assert.deepEqual(ids(s), ['a', 'x']);
    assert.equal(s.devices.get('a').lat, 2, 'the batch after the snapshot applies on top of it');
  });

  it('ignores other message types and can be cleared', () => {
    const inbox = createInbox();
    assert.equal(inboxPush(inbox, { type: 'pong', id: 1 }), false);
    assert.equal(inboxPush(inbox, null), false);
    inboxPush(inbox, { type: 'snapshot', group: 'g', devices: [] });
    inboxClear(inbox);
    assert.equal(inbox.entries.length, 0);
    assert.equal(inbox.messages, 0);
  });
});
