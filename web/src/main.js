// Wiring of the live map page: it reads the URL settings, creates the state, the map, the
// panel, the header and the socket, and connects them; the parts themselves live in their own
// modules (web/README.md, "Layers"). Snapshots and batches are coalesced in an inbox and applied
// at the start of each animation frame, the canvas is repainted in that frame only when
// something visible changed, and the panel is refreshed twice a second, however many batches
// arrive.

import 'leaflet/dist/leaflet.css';
import './style.css';

import { Camera } from './camera.js';
import { Link, ServerClock } from './connection.js';
import { Header } from './header.js';
import { createInbox, inboxClear, inboxDrain, inboxPush } from './inbox.js';
import { FrameLoop, createStats } from './loop.js';
import { MapView } from './mapview.js';
import { createState, retainGroups } from './model.js';
import { Notice } from './notice.js';
import { DevicePanel } from './panel.js';
import { parseParams, socketUrl } from './params.js';
import { AccessToken, bindTokenForm } from './token.js';
import { DeviceTooltip } from './tooltip.js';

const $ = (id) => document.getElementById(id);

const params = parseParams(window.location.search);
const token = new AccessToken(params.token);
const state = createState();
const inbox = createInbox();
const clock = new ServerClock();
const serverNow = () => clock.now();
const stats = createStats();
window.beaconStats = stats;

// ---- map, panel, header ------------------------------------------------------------------

const mapView = new MapView('map', {
  tiles: params.tiles,
  attribution: params.attribution,
  state,
  onFitAll: () => camera.fitAll(),
});
const { map, layer } = mapView;

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
  { onSelect: (id) => camera.follow(id), serverNow },
);

const camera = new Camera({ map, layer, panel, state, badge: $('follow-badge'), badgeName: $('follow-name') });
$('follow-stop').addEventListener('click', () => camera.stopFollowing());
$('details-close').addEventListener('click', () => camera.stopFollowing());

const tooltip = new DeviceTooltip({ map, layer, state, el: $('tooltip'), serverNow });

const notice = new Notice($('notice'));
const header = new Header(
  { groups: $('groups'), conn: $('conn'), connText: $('conn-text'), rtt: $('rtt'), fps: $('fps') },
  { notice, hasToken: () => token.value !== '' },
);
header.showGroups(params.groups);
bindTokenForm(
  { button: $('token-btn'), form: $('token-form'), input: $('token'), clear: $('token-clear') },
  token,
  () => {
    header.tokenChanged();
    link.restart();
  },
);
if (params.problems.length > 0) notice.show(`Ignored: ${params.problems.join('; ')}`, 'warn', 10000);

// ---- socket ------------------------------------------------------------------------------

// Snapshots and batches wait in the inbox (coalesced per group and device) and are applied at
// the start of the next animation frame; the rest is handled at once.
function onMessage(msg) {
  switch (msg.type) {
    case 'welcome':
      // A new connection: what was queued for the old one is superseded by the snapshots that
      // follow.
      inboxClear(inbox);
      if (Number.isFinite(msg.server_time)) clock.offset = msg.server_time - Date.now();
      if (Array.isArray(msg.groups)) {
        header.showGroups(msg.groups);
        retainGroups(state, msg.groups);
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
      notice.show(`Server: ${msg.code || 'error'}${msg.message ? ` – ${msg.message}` : ''}`);
      break;
    default:
      // `pong` is handled by the link (RTT); unknown types are ignored (the protocol may grow).
      break;
  }
}

function drainInbox(now) {
  if (inboxDrain(inbox, state, now) > 0) camera.stateChanged();
}

// requestAnimationFrame stops in a hidden tab; keep the state current there all the same.
setInterval(() => {
  if (document.hidden) drainInbox(performance.now());
}, 1000);

const link = new Link({
  url: () => socketUrl(window.location, { groups: params.groups, id: params.id, token: token.value }),
  onMessage,
  onStatus(info) {
    stats.state = info.state;
    header.showLink(info);
  },
  onRtt({ rtt, offset }) {
    stats.rtt = rtt;
    if (offset !== undefined) clock.offset = offset;
    header.showRtt(rtt);
  },
});
link.start();

new FrameLoop({ stats, state, drain: drainInbox, camera, layer, tooltip, panel, header }).start();

// A small read-only handle for tests and for poking around in the console.
window.beaconDebug = {
  map,
  state,
  params: { ...params, token: token.value ? '(set)' : '' },
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
  follow: (id) => camera.follow(id),
  fitAll: () => camera.fitAll(),
};
