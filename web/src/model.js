// The state model of the live map: which devices exist, where they are, where they were and
// where they are drawn while gliding between fixes; what snapshots, batches and offline notices
// do to them; and the search, sort and counts the panel shows.
//
// Pure: no DOM, no map library, no network; every function here takes plain data and returns
// plain data, so `node --test web/test/` exercises it directly.
//
// Coordinates are kept twice: as received (lat/lon, for the panel) and in normalised Web
// Mercator (x and y in [0, 1], for drawing), so the renderer projects 5,000 devices per frame
// with one multiply and one subtract each.

import { toMercator } from './geometry.js';

/** Number of past fixes kept per device for its trail. */
export const DEFAULT_TRAIL_LENGTH = 20;

/** Shortest and longest glide between two fixes, in milliseconds. */
export const GLIDE_MIN_MS = 100;
export const GLIDE_MAX_MS = 1500;

/**
 * A jump longer than this (in normalised Mercator units, roughly 5 km at the equator) is drawn
 * as a jump: gliding a marker across a city after a gap would show a path nobody drove.
 */
export const GLIDE_MAX_DISTANCE = 5000 / 40075016.686;

/** Optional fields of a position record (protocol.md, "Position record"). */
export const OPTIONAL_FIELDS = ['acc', 'alt', 'spd', 'hdg', 'batt'];

/** A fresh, empty state. */
export function createState({ trailLength = DEFAULT_TRAIL_LENGTH } = {}) {
  return {
    /** @type {Map<string, object>} device id -> device */
    devices: new Map(),
    trailLength,
    /** Position records applied since the page opened (snapshots and batches). */
    updates: 0,
    /** Bumped on every change a view may care about. */
    version: 0,
    /**
     * Bumped only when the set of devices or their online flags change: what an id- or
     * status-sorted list depends on.
     */
    shape: 0,
  };
}

function isFiniteNumber(v) {
  return typeof v === 'number' && Number.isFinite(v);
}

/** Whether a record carries what a marker needs: an id and a finite position. */
export function isValidRecord(rec) {
  return (
    rec !== null &&
    typeof rec === 'object' &&
    typeof rec.id === 'string' &&
    rec.id.length > 0 &&
    isFiniteNumber(rec.lat) &&
    isFiniteNumber(rec.lon) &&
    rec.lat >= -90 &&
    rec.lat <= 90 &&
    rec.lon >= -180 &&
    rec.lon <= 180
  );
}

/**
 * The time of a record's fix: its `ts`, or `now` when it has none. Exported for the inbox,
 * which compares fixes the same way the state does.
 */
export function recordTime(rec, now) {
  return isFiniteNumber(rec.ts) ? rec.ts : now;
}

function newDevice(id) {
  return {
    id,
    lat: 0,
    lon: 0,
    ts: -Infinity,
    rts: 0,
    online: false,
    acc: undefined,
    alt: undefined,
    spd: undefined,
    hdg: undefined,
    batt: undefined,
    /** Groups this device was seen in; it is forgotten when the last one lets go of it. */
    groups: new Set(),
    /** Past fixes, oldest first, each `{x, y}` in normalised Mercator; the last is the newest. */
    trail: [],
    /** Glide: from (fx, fy) at t0 to (x, y) at t0 + dur (local clock, ms). */
    x: 0,
    y: 0,
    fx: 0,
    fy: 0,
    t0: 0,
    dur: 0,
    /** Local time the latest fix was applied, for glide durations. */
    seenAt: 0,
  };
}

/**
 * Moves a device to a new fix: position, optional fields, trail and glide.
 * Optional fields absent from the record keep their last known value (a phone that reports its
 * battery once a minute still shows it between reports).
 */
function applyFix(state, dev, rec, now, fresh) {
  const ts = recordTime(rec, now);
  const { x, y } = toMercator(rec.lat, rec.lon);
  if (fresh) {
    dev.fx = x;
    dev.fy = y;
    dev.dur = 0;
  } else {
    // Start from wherever the marker is drawn right now, so a fix arriving mid-glide bends the
    // path instead of jumping back.
    const cur = glidePosition(dev, now);
    const dist = Math.hypot(x - cur.x, y - cur.y);
    const interval = now - dev.seenAt;
    dev.fx = cur.x;
    dev.fy = cur.y;
    dev.dur =
      dist > GLIDE_MAX_DISTANCE ? 0 : Math.max(GLIDE_MIN_MS, Math.min(GLIDE_MAX_MS, interval));
  }
  dev.x = x;
  dev.y = y;
  dev.t0 = now;
  dev.seenAt = now;
  dev.lat = rec.lat;
  dev.lon = rec.lon;
  dev.ts = ts;
  // Without `rts` (not from this server), the fix time stands in for the receive time.
  dev.rts = isFiniteNumber(rec.rts) ? rec.rts : ts;
  for (const f of OPTIONAL_FIELDS) {
    if (isFiniteNumber(rec[f])) dev[f] = rec[f];
  }
  const last = dev.trail[dev.trail.length - 1];
  if (!last || last.x !== x || last.y !== y) {
    dev.trail.push({ x, y });
    if (dev.trail.length > state.trailLength) {
      dev.trail.splice(0, dev.trail.length - state.trailLength);
    }
  }
}

function setOnline(state, dev, online) {
  if (dev.online !== online) {
    dev.online = online;
    state.shape += 1;
  }
}

/**
 * Applies one position record seen in `group`. Returns true when the device's state changed.
 * A fix older than the one held is ignored (batches of two groups can interleave).
 */
export function applyRecord(state, group, rec, now) {
  if (!isValidRecord(rec)) return false;
  let dev = state.devices.get(rec.id);
  const fresh = dev === undefined;
  if (fresh) {
    dev = newDevice(rec.id);
    state.devices.set(rec.id, dev);
    state.shape += 1;
  }
  dev.groups.add(group);
  const ts = recordTime(rec, now);
  if (!fresh && ts < dev.ts) return false;
  applyFix(state, dev, rec, now, fresh);
  setOnline(state, dev, rec.online !== false);
  state.updates += 1;
  state.version += 1;
  return true;
}

/**
 * A `snapshot` replaces everything known about its group: devices listed are set to their
 * record (online flag included), devices of the group that are not listed leave the group, and a
 * device that belongs to no watched group any more is forgotten.
 */
export function applySnapshot(state, msg, now) {
  const group = msg.group;
  const listed = new Set();
  for (const rec of Array.isArray(msg.devices) ? msg.devices : []) {
    if (!isValidRecord(rec)) continue;
    listed.add(rec.id);
    const dev = state.devices.get(rec.id);
    const older = dev !== undefined && recordTime(rec, now) < dev.ts;
    if (older) {
      // Keep the newer position we hold, but the snapshot is the authority on membership and
      // liveness.
      dev.groups.add(group);
      setOnline(state, dev, rec.online !== false);
    } else {
      applyRecord(state, group, rec, now);
    }
  }
  for (const [id, dev] of state.devices) {
    if (dev.groups.has(group) && !listed.has(id)) {
      dev.groups.delete(group);
      if (dev.groups.size === 0) {
        state.devices.delete(id);
        state.shape += 1;
      }
    }
  }
  state.version += 1;
}

/** A `batch`: updates merged (newest fix wins), then the `offline` list marked. */
export function applyBatch(state, msg, now) {
  const group = msg.group;
  for (const rec of Array.isArray(msg.updates) ? msg.updates : []) {
    applyRecord(state, group, rec, now);
  }
  for (const id of Array.isArray(msg.offline) ? msg.offline : []) {
    const dev = state.devices.get(id);
    if (dev !== undefined && dev.online) {
      // The position stays: an offline device is shown where it was last seen.
      setOnline(state, dev, false);
      state.version += 1;
    }
  }
}

/** Forgets every device that belongs to none of `groups` (after a `welcome` or an `unsub`). */
export function retainGroups(state, groups) {
  const keep = new Set(groups);
  for (const [id, dev] of state.devices) {
    for (const g of dev.groups) if (!keep.has(g)) dev.groups.delete(g);
    if (dev.groups.size === 0) {
      state.devices.delete(id);
      state.shape += 1;
      state.version += 1;
    }
  }
}

/** Where a device is drawn at local time `now`: on its glide from the previous to the latest fix. */
export function glidePosition(dev, now) {
  if (dev.dur <= 0) return { x: dev.x, y: dev.y };
  const t = (now - dev.t0) / dev.dur;
  if (t >= 1) return { x: dev.x, y: dev.y };
  if (t <= 0) return { x: dev.fx, y: dev.fy };
  return { x: dev.fx + (dev.x - dev.fx) * t, y: dev.fy + (dev.y - dev.fy) * t };
}

/** Whether a device is still on its way to its latest fix at local time `now`. */
export function isGliding(dev, now) {
  return dev.dur > 0 && now - dev.t0 < dev.dur;
}

/** Devices whose id contains `query` (case-insensitive, surrounding spaces ignored). */
export function filterDevices(devices, query) {
  const q = (query || '').trim().toLowerCase();
  const out = [];
  for (const dev of devices) {
    if (q === '' || dev.id.toLowerCase().includes(q)) out.push(dev);
  }
  return out;
}

const collator = new Intl.Collator('en', { numeric: true, sensitivity: 'base' });

/** Compares ids the way people read them: `car-2` before `car-10`. */
export function compareIds(a, b) {
  return collator.compare(a, b) || (a < b ? -1 : a > b ? 1 : 0);
}

/**
 * When the server last heard from a device (`rts`, on the server's clock), which unlike the fix
 * time (`ts`, the device's clock) is immune to a device whose clock is off.
 */
export function lastSeen(dev) {
  return dev.rts;
}

/**
 * Sorts devices in place for the panel.
 * - `status` (default): online first, then by id;
 * - `id`: by id;
 * - `recent`: last heard from first, then by id.
 */
export function sortDevices(list, mode = 'status') {
  if (mode === 'id') {
    list.sort((a, b) => compareIds(a.id, b.id));
  } else if (mode === 'recent') {
    list.sort((a, b) => lastSeen(b) - lastSeen(a) || compareIds(a.id, b.id));
  } else {
    list.sort((a, b) => Number(b.online) - Number(a.online) || compareIds(a.id, b.id));
  }
  return list;
}

/** Devices counted by liveness. */
export function countOnline(devices) {
  let online = 0;
  let total = 0;
  for (const dev of devices) {
    total += 1;
    if (dev.online) online += 1;
  }
  return { online, offline: total - online, total };
}
