// Wiring of the live map page: URL settings, the socket, the state, the map, the panel and the
// animation loop. Snapshots and batches are coalesced in an inbox and applied at the start of
// each animation frame, the canvas is repainted in that frame only when something visible
// changed, and the panel is refreshed twice a second, however many batches arrive.

import * as L from 'leaflet/dist/leaflet-src.esm.js';
import 'leaflet/dist/leaflet.css';
import './style.css';

import { Link } from './connection.js';
import { formatAge, speedKmh } from './format.js';
import { deviceBounds, fromMercator } from './geometry.js';
import { createInbox, inboxClear, inboxDrain, inboxPush } from './inbox.js';
import { countOnline, createState, glidePosition, lastSeen, retainGroups } from './model.js';
import { DevicePanel } from './panel.js';
import { parseParams, socketUrl } from './params.js';
import { DeviceLayer } from './render.js';

const PANEL_REFRESH_MS = 500;
const TOKEN_KEY = 'beacon.access_token';

const params = parseParams(window.location.search);
const state = createState();
const inbox = createInbox();
const $ = (id) => document.getElementById(id);

let token = params.token || sessionStorage.getItem(TOKEN_KEY) || '';
if (params.token) {
  // Keep the token for this tab, out of the address bar (bookmarks, screenshots, history).
  sessionStorage.setItem(TOKEN_KEY, params.token);
  const url = new URL(window.location.href);
  url.searchParams.delete('access_token');
  window.history.replaceState(null, '', url);
}
let serverOffset = 0;
let followId = null;
let autoFitDone = false;
let linkInfo = { state: 'connecting' };
let watchedGroups = params.groups;
const stats = {
  fps: 0,
  devices: 0,
  online: 0,
  visible: 0,
  updates: 0,
  batches: 0,
  snapshots: 0,
  paints: 0,
  paintMs: 0,
  rtt: null,
  state: 'connecting',
};
window.beaconStats = stats;

// ---- map --------------------------------------------------------------------------------

const map = L.map('map', {
  zoomControl: true,
  worldCopyJump: false,
  minZoom: 2,
  maxZoom: params.tiles ? 19 : 20,
  zoomSnap: 0.25,
  wheelPxPerZoomLevel: 90,
}).setView([20, 0], 2);
map.attributionControl.setPrefix(false);

let tilesLoaded = 0;
let tilesFailed = 0;
if (params.tiles) {
  const tiles = L.tileLayer(params.tiles, {
    maxZoom: 19,
    attribution: params.attribution,
    crossOrigin: false,
  });
  tiles.on('tileload', () => {
    tilesLoaded += 1;
    updateTileStatus();
  });
  tiles.on('tileerror', () => {
    tilesFailed += 1;
    updateTileStatus();
  });
  tiles.addTo(map);
} else {
  map.attributionControl.addAttribution('No map tiles');
}

const layer = new DeviceLayer(state, { showGrid: !params.tiles });
layer.addTo(map);

function updateTileStatus() {
  // Tiles that never load (offline, blocked): show the coordinate grid instead.
  const offline = tilesFailed > 0 && tilesLoaded === 0;
  document.body.classList.toggle('tiles-offline', offline);
  if (offline !== layer.showGrid) {
    layer.showGrid = offline;
    layer.invalidate();
  }
  $('tile-status').hidden = !offline;
}

const FitControl = L.Control.extend({
  options: { position: 'topleft' },
  onAdd() {
    const box = L.DomUtil.create('div', 'leaflet-bar beacon-fit');
    const btn = L.DomUtil.create('a', '', box);
    btn.href = '#';
    btn.id = 'fit-all';
    btn.title = 'Show all devices';
    btn.setAttribute('role', 'button');
    btn.setAttribute('aria-label', 'Show all devices');
    btn.innerHTML =
      '<svg viewBox="0 0 24 24" aria-hidden="true"><path d="M4 9V4h5M15 4h5v5M20 15v5h-5M9 20H4v-5" fill="none" stroke="currentColor" stroke-width="2" stroke-linecap="round" stroke-linejoin="round"/></svg>';
    L.DomEvent.disableClickPropagation(box);
    L.DomEvent.on(btn, 'click', (ev) => {
      L.DomEvent.preventDefault(ev);
      fitAll();
    });
    return box;
  },
});
new FitControl().addTo(map);

const tileStatus = L.DomUtil.create('div', 'tile-status');
tileStatus.id = 'tile-status';
tileStatus.hidden = true;
tileStatus.textContent = 'Map tiles unavailable · showing a coordinate grid';
$('map').appendChild(tileStatus);

function fitAll() {
  stopFollowing();
  const b = deviceBounds(state.devices.values());
  if (!b) return;
  if (b.south === b.north && b.west === b.east) {
    map.setView([b.south, b.west], Math.max(map.getZoom(), 15));
    return;
  }
  map.fitBounds(
    [
      [b.south, b.west],
      [b.north, b.east],
    ],
    { padding: [64, 64], maxZoom: 17 },
  );
}

// ---- following, hover --------------------------------------------------------------------

function follow(id) {
  if (followId === id) {
    stopFollowing();
    return;
  }
  followId = id;
  layer.followId = id;
  layer.invalidate();
  panel.select(id);
  panel.reveal(id);
  $('follow-name').textContent = id;
  $('follow-badge').hidden = false;
  const dev = state.devices.get(id);
  if (dev) {
    const p = glidePosition(dev, performance.now());
    const ll = fromMercator(p.x, p.y);
    map.setView([ll.lat, ll.lon], Math.max(map.getZoom(), 15), { animate: false });
  }
}

function stopFollowing() {
  if (followId === null) return;
  followId = null;
  layer.followId = null;
  layer.invalidate();
  panel.select(null);
  $('follow-badge').hidden = true;
}

function keepFollowed(now) {
  if (followId === null || layer.zooming) return;
  const dev = state.devices.get(followId);
  if (!dev) return;
  const p = glidePosition(dev, now);
  const ll = fromMercator(p.x, p.y);
  const target = map.latLngToContainerPoint([ll.lat, ll.lon]);
  const size = map.getSize();
  if (Math.abs(target.x - size.x / 2) > 0.5 || Math.abs(target.y - size.y / 2) > 0.5) {
    map.panTo([ll.lat, ll.lon], { animate: false });
  }
}

map.on('dragstart', stopFollowing);
map.on('click', (e) => {
  const id = layer.hitTest(e.containerPoint.x, e.containerPoint.y);
  if (id) follow(id);
});

let hoverPoint = null;
map.on('mousemove', (e) => {
  hoverPoint = e.containerPoint;
});
map.on('mouseout', () => {
  hoverPoint = null;
});

function updateHover() {
  const tip = $('tooltip');
  const id = hoverPoint ? layer.hitTest(hoverPoint.x, hoverPoint.y) : null;
  if (id !== layer.hoverId) {
    layer.hoverId = id;
    layer.invalidate();
    $('map').classList.toggle('over-device', id !== null);
  }
  const dev = id ? state.devices.get(id) : null;
  if (!dev) {
    tip.hidden = true;
    return;
  }
  const at = layer.screenPoint(id);
  if (!at) return;
  const kmh = speedKmh(dev.spd);
  const age = formatAge(serverNow() - lastSeen(dev));
  tip.textContent = `${dev.id} · ${dev.online ? 'online' : 'offline'} · ${age === 'now' ? 'now' : `${age} ago`}${kmh === undefined ? '' : ` · ${kmh} km/h`}`;
  tip.style.transform = `translate(${Math.round(at.x + 14)}px, ${Math.round(at.y - 34)}px)`;
  tip.hidden = false;
}

// ---- panel -----------------------------------------------------------------------------

function serverNow() {
  return Date.now() + serverOffset;
}

const panel = new DevicePanel(
  {
    list: $('list'),
    spacer: $('list-spacer'),
    search: $('search'),
    sort: $('sort'),
    counts: $('counts'),
    details: $('details'),
    empty: $('list-empty'),
  },
  { onSelect: follow, serverNow },
);
$('follow-stop').addEventListener('click', stopFollowing);
$('details-close').addEventListener('click', stopFollowing);

// ---- header ----------------------------------------------------------------------------

function renderGroups(groups) {
  const box = $('groups');
  box.replaceChildren(
    ...groups.map((g) => {
      const chip = document.createElement('span');
      chip.className = 'chip';
      chip.textContent = g;
      return chip;
    }),
  );
}
renderGroups(watchedGroups);

function renderConn() {
  const el = $('conn');
  const s = linkInfo.state;
  el.dataset.state = s;
  let text = s;
  if (s === 'reconnecting' && linkInfo.retryAt) {
    const secs = Math.max(0, Math.ceil((linkInfo.retryAt - Date.now()) / 1000));
    text = secs > 0 ? `reconnecting in ${secs} s` : 'reconnecting';
  }
  if ($('conn-text').textContent !== text) $('conn-text').textContent = text;
  el.title = linkInfo.closeCode ? `last close code ${linkInfo.closeCode}${linkInfo.reason ? `: ${linkInfo.reason}` : ''}` : '';
}

const tokenBtn = $('token-btn');
const tokenForm = $('token-form');
$('token').value = token;
tokenBtn.classList.toggle('active', token !== '');
tokenBtn.addEventListener('click', () => {
  tokenForm.hidden = !tokenForm.hidden;
  tokenBtn.setAttribute('aria-expanded', String(!tokenForm.hidden));
  if (!tokenForm.hidden) $('token').focus();
});
tokenForm.addEventListener('submit', (ev) => {
  ev.preventDefault();
  setToken($('token').value.trim());
});
$('token-clear').addEventListener('click', () => {
  $('token').value = '';
  setToken('');
});

function setToken(value) {
  token = value;
  refusedInRow = 0;
  if (token) sessionStorage.setItem(TOKEN_KEY, token);
  else sessionStorage.removeItem(TOKEN_KEY);
  tokenBtn.classList.toggle('active', token !== '');
  tokenForm.hidden = true;
  tokenBtn.setAttribute('aria-expanded', 'false');
  link.restart();
}

let noticeTimer = null;
let stickyNotice = false;
let refusedInRow = 0;

/** A notice that stays until the connection is live again. */
function showSticky(text) {
  notice(text, 'error', 0);
  stickyNotice = true;
}

function notice(text, kind = 'error', ms = 6000) {
  const el = $('notice');
  el.textContent = text;
  el.dataset.kind = kind;
  el.hidden = false;
  clearTimeout(noticeTimer);
  if (ms > 0) noticeTimer = setTimeout(() => (el.hidden = true), ms);
}
if (params.problems.length > 0) notice(`Ignored: ${params.problems.join('; ')}`, 'warn', 10000);

// ---- socket ----------------------------------------------------------------------------

// Snapshots and batches wait in the inbox (coalesced per group and device) and are applied at
// the start of the next animation frame; the rest is handled at once.
function onMessage(msg) {
  switch (msg.type) {
    case 'welcome':
      // A new connection: what was queued for the old one is superseded by the snapshots that
      // follow.
      inboxClear(inbox);
      if (Number.isFinite(msg.server_time)) serverOffset = msg.server_time - Date.now();
      if (Array.isArray(msg.groups)) {
        watchedGroups = msg.groups;
        renderGroups(watchedGroups);
        retainGroups(state, watchedGroups);
      }
      break;
    case 'snapshot':
      stats.snapshots += 1;
      inboxPush(inbox, msg);
      break;
    case 'batch':
      stats.batches += 1;
      inboxPush(inbox, msg);
      break;
    case 'error':
      notice(`Server: ${msg.code || 'error'}${msg.message ? ` – ${msg.message}` : ''}`);
      break;
    default:
      // `pong` is handled by the link (RTT); unknown types are ignored (the protocol may grow).
      break;
  }
}

function drainInbox(now) {
  if (inboxDrain(inbox, state, now) === 0) return;
  // The followed device left the watched groups (or its retention ended).
  if (followId !== null && !state.devices.has(followId)) stopFollowing();
  if (!autoFitDone && state.devices.size > 0) {
    autoFitDone = true;
    fitAll();
  }
}

// requestAnimationFrame stops in a hidden tab; keep the state current there all the same.
setInterval(() => {
  if (document.hidden) drainInbox(performance.now());
}, 1000);

const link = new Link({
  url: () => socketUrl(window.location, { groups: params.groups, id: params.id, token }),
  onMessage,
  onStatus(info) {
    linkInfo = info;
    stats.state = info.state;
    renderConn();
    if (info.state === 'live') {
      refusedInRow = 0;
      if (stickyNotice) {
        stickyNotice = false;
        $('notice').hidden = true;
      }
    } else if (info.state === 'reconnecting') {
      if (info.closeCode === 1008) {
        showSticky('The server closed the connection (policy): the access token may have expired.');
      }
      refusedInRow = info.opened ? 0 : refusedInRow + 1;
      if (refusedInRow === 3) {
        showSticky(
          token
            ? 'Cannot connect to the live feed: the server is down or refuses this access token.'
            : 'Cannot connect to the live feed: the server is down, or it requires an access token (key button, top right).',
        );
      }
    }
  },
  onRtt({ rtt, offset }) {
    stats.rtt = rtt;
    if (offset !== undefined) serverOffset = offset;
    $('rtt').textContent = `${rtt} ms`;
  },
});
link.start();

// ---- animation loop --------------------------------------------------------------------

let frames = 0;
let fpsWindowStart = performance.now();
let drawTime = 0;
let draws = 0;
let lastPanelAt = 0;

function loop(now) {
  frames += 1;
  drainInbox(now);
  keepFollowed(now);
  const t0 = performance.now();
  if (layer.render(now)) {
    drawTime += performance.now() - t0;
    draws += 1;
  }
  stats.visible = layer.visible;
  updateHover();
  if (now - lastPanelAt >= PANEL_REFRESH_MS) {
    lastPanelAt = now;
    panel.refresh(state);
    renderConn();
    const c = countOnline(state.devices.values());
    stats.devices = c.total;
    stats.online = c.online;
    stats.updates = state.updates;
  }
  if (now - fpsWindowStart >= 1000) {
    stats.fps = Math.round((frames * 1000) / (now - fpsWindowStart));
    stats.paintMs = draws ? Math.round((drawTime / draws) * 10) / 10 : 0;
    stats.paints = Math.round((draws * 1000) / (now - fpsWindowStart));
    $('fps').textContent = String(stats.fps);
    frames = 0;
    draws = 0;
    drawTime = 0;
    fpsWindowStart = now;
  }
  requestAnimationFrame(loop);
}
requestAnimationFrame(loop);

// A small read-only handle for tests and for poking around in the console.
window.beaconDebug = {
  map,
  state,
  params: { ...params, token: token ? '(set)' : '' },
  device(id) {
    const dev = state.devices.get(id);
    if (!dev) return null;
    const p = layer.screenPoint(id);
    return {
      id: dev.id,
      lat: dev.lat,
      lon: dev.lon,
      ts: dev.ts,
      online: dev.online,
      spd: dev.spd,
      hdg: dev.hdg,
      batt: dev.batt,
      trail: dev.trail.length,
      screen: p,
      expected: map.latLngToContainerPoint([dev.lat, dev.lon]),
    };
  },
  follow,
  fitAll,
};
