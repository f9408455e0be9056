// The inbox: where snapshots and batches wait for the next animation frame, so that the state
// changes once a frame however many messages arrive (see `createInbox`).
//
// Pure: no DOM, so `node --test web/test/` exercises it directly.

import { applyBatch, applySnapshot, isValidRecord, recordTime } from './model.js';

/**
 * Messages waiting for the next animation frame, coalesced so that the wait costs memory in
 * proportion to the devices, not to the messages: per group, at most a `snapshot` followed by
 * one merged `batch` (latest fix per device, offline ids). A `snapshot` supersedes whatever was
 * waiting for its group. Applying the inbox gives the same state as applying every message in
 * order, except for trail points that were overtaken within the same frame.
 */
export function createInbox() {
  return { entries: [], messages: 0 };
}

/** Queues a `snapshot` or `batch`; returns false (and queues nothing) for other types. */
export function inboxPush(inbox, msg) {
  if (msg === null || typeof msg !== 'object') return false;
  if (msg.type === 'snapshot') {
    inbox.entries = inbox.entries.filter((e) => e.group !== msg.group);
    inbox.entries.push({ kind: 'snapshot', group: msg.group, msg });
  } else if (msg.type === 'batch') {
    let entry = null;
    for (let i = inbox.entries.length - 1; i >= 0; i -= 1) {
      if (inbox.entries[i].group === msg.group) {
        entry = inbox.entries[i];
        break;
      }
    }
    if (entry === null || entry.kind !== 'batch') {
      entry = { kind: 'batch', group: msg.group, updates: new Map(), offline: new Set() };
      inbox.entries.push(entry);
    }
    for (const rec of Array.isArray(msg.updates) ? msg.updates : []) {
      if (!isValidRecord(rec)) continue;
      const held = entry.updates.get(rec.id);
      if (held === undefined || !(recordTime(rec, 0) < recordTime(held, 0))) entry.updates.set(rec.id, rec);
      // A fix after an offline notice means the device is back.
      entry.offline.delete(rec.id);
    }
    for (const id of Array.isArray(msg.offline) ? msg.offline : []) entry.offline.add(id);
  } else {
    return false;
  }
  inbox.messages += 1;
  return true;
}

/** Applies everything queued to `state`; returns how many messages that covered. */
export function inboxDrain(inbox, state, now) {
  for (const e of inbox.entries) {
    if (e.kind === 'snapshot') {
      applySnapshot(state, e.msg, now);
    } else {
      applyBatch(state, { group: e.group, updates: [...e.updates.values()], offline: [...e.offline] }, now);
    }
  }
  const n = inbox.messages;
  inbox.entries = [];
  inbox.messages = 0;
  return n;
}

/** Drops whatever is queued (a new connection starts over with fresh snapshots). */
export function inboxClear(inbox) {
  inbox.entries = [];
  inbox.messages = 0;
}
