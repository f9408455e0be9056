// The side panel: a searchable, sortable, virtualised list of devices and a card for the
// followed one. Only the rows in view exist in the DOM (a pool of ~20 nodes reused while
// scrolling), and the list is refreshed on a timer, not on every update.

import { formatAge, speedKmh } from './format.js';
import { countOnline, filterDevices, lastSeen, sortDevices } from './model.js';

/** Row height in pixels; must match `.row` in style.css. */
export const ROW_HEIGHT = 52;
const OVERSCAN = 4;

const numberFmt = new Intl.NumberFormat('en');

export class DevicePanel {
  /**
   * @param {object} els  DOM elements: list, spacer, search, sort, counts, details, empty
   * @param {object} opts `onSelect(id)` when a row is clicked; `serverNow()` for ages
   */
  constructor(els, { onSelect, serverNow }) {
    this.els = els;
    this.onSelect = onSelect;
    this.serverNow = serverNow;
    this.rows = [];
    this.items = [];
    this.selectedId = null;
    this.query = '';
    this.sortMode = els.sort.value || 'status';
    this.rowsTouched = 0;

    els.search.addEventListener('input', () => {
      this.query = els.search.value;
      els.list.scrollTop = 0;
      this.refresh();
    });
    els.sort.addEventListener('change', () => {
      this.sortMode = els.sort.value;
      this.refresh();
    });
    els.list.addEventListener('scroll', () => {
      if (!this.scrollQueued) {
        this.scrollQueued = true;
        requestAnimationFrame(() => {
          this.scrollQueued = false;
          this.renderRows();
        });
      }
    });
    els.list.addEventListener('click', (ev) => {
      const row = ev.target.closest('.row');
      if (row && row.dataset.id) this.onSelect(row.dataset.id);
    });
    els.list.addEventListener('keydown', (ev) => {
      const row = ev.target.closest('.row');
      if (row && row.dataset.id && (ev.key === 'Enter' || ev.key === ' ')) {
        ev.preventDefault();
        this.onSelect(row.dataset.id);
      }
    });
    this.state = null;
  }

  /** Recomputes the list from `state` and redraws the visible rows and the card. */
  refresh(state = this.state) {
    if (!state) return;
    this.state = state;
    // Sorting 5,000 devices twice a second shows in a profile; by id or status the order only
    // changes with the set of devices or their online flags, so reuse it until then.
    const key = `${state.shape}|${this.query}|${this.sortMode}`;
    if (key !== this.sortedKey || this.sortMode === 'recent') {
      this.items = sortDevices(filterDevices(state.devices.values(), this.query), this.sortMode);
      this.sortedKey = key;
    }
    const c = countOnline(state.devices.values());
    const shown = this.items.length;
    let text = `${numberFmt.format(c.total)} device${c.total === 1 ? '' : 's'} · ${numberFmt.format(c.online)} online`;
    if (this.query.trim() !== '') text = `${numberFmt.format(shown)} of ${text}`;
    this.els.counts.textContent = text;
    this.els.spacer.style.height = `${shown * ROW_HEIGHT}px`;
    this.els.empty.hidden = shown > 0;
    this.els.empty.textContent =
      c.total === 0 ? 'Waiting for devices…' : `No device matches “${this.query.trim()}”`;
    this.renderRows();
    this.renderDetails();
  }

  renderRows() {
    const list = this.els.list;
    const first = Math.max(0, Math.floor(list.scrollTop / ROW_HEIGHT) - OVERSCAN);
    const count = Math.ceil(list.clientHeight / ROW_HEIGHT) + OVERSCAN * 2;
    const last = Math.min(this.items.length, first + count);
    const now = this.serverNow();
    let k = 0;
    for (let i = first; i < last; i += 1, k += 1) {
      const row = this.rowAt(k);
      this.fillRow(row, this.items[i], i, now);
    }
    for (; k < this.rows.length; k += 1) {
      if (!this.rows[k].hidden) this.rows[k].hidden = true;
    }
  }

  rowAt(k) {
    while (this.rows.length <= k) {
      const row = document.createElement('div');
      row.className = 'row';
      row.tabIndex = 0;
      row.setAttribute('role', 'option');
      row.innerHTML =
        '<span class="dot"></span><span class="name"></span><span class="age"></span>' +
        '<span class="meta"><span class="spd"></span><span class="bat"><span class="bat-fill"></span></span><span class="batt"></span></span>';
      row.parts = {
        name: row.querySelector('.name'),
        age: row.querySelector('.age'),
        spd: row.querySelector('.spd'),
        bat: row.querySelector('.bat'),
        batFill: row.querySelector('.bat-fill'),
        batt: row.querySelector('.batt'),
      };
      row.cache = { batt: null };
      this.els.list.appendChild(row);
      this.rows.push(row);
    }
    return this.rows[k];
  }

  fillRow(row, dev, index, now) {
    const c = row.cache;
    const p = row.parts;
    if (row.hidden) row.hidden = false;
    this.rowsTouched += 1;
    if (c.index !== index) {
      row.style.transform = `translateY(${index * ROW_HEIGHT}px)`;
      c.index = index;
    }
    if (c.id !== dev.id) {
      row.dataset.id = dev.id;
      p.name.textContent = dev.id;
      row.title = dev.id;
      c.id = dev.id;
    }
    set(row, c, 'online', dev.online, (v) => row.classList.toggle('offline', !v));
    set(row, c, 'selected', dev.id === this.selectedId, (v) => {
      row.classList.toggle('selected', v);
      row.setAttribute('aria-selected', String(v));
    });
    const age = formatAge(now - lastSeen(dev));
    set(row, c, 'age', age === 'now' ? 'now' : `${age} ago`, (v) => (p.age.textContent = v));
    const kmh = speedKmh(dev.spd);
    const status = dev.online ? '' : 'offline · ';
    set(row, c, 'spd', `${status}${kmh === undefined ? '– km/h' : `${kmh} km/h`}`, (v) => (p.spd.textContent = v));
    set(row, c, 'batt', dev.batt, (v) => {
      const known = v !== undefined;
      p.bat.hidden = !known;
      p.batt.textContent = known ? `${Math.round(v)}%` : '';
      if (known) {
        p.batFill.style.width = `${Math.max(0, Math.min(100, v))}%`;
        p.bat.classList.toggle('low', v < 20);
      }
    });
  }

  renderDetails() {
    const box = this.els.details;
    const dev = this.selectedId && this.state ? this.state.devices.get(this.selectedId) : null;
    if (!dev) {
      box.hidden = true;
      return;
    }
    box.hidden = false;
    const now = this.serverNow();
    const kmh = speedKmh(dev.spd);
    const fields = {
      id: dev.id,
      status: dev.online ? 'online' : 'offline',
      position: `${dev.lat.toFixed(5)}, ${dev.lon.toFixed(5)}`,
      seen: ago(now - lastSeen(dev)),
      fix: ago(now - dev.ts),
      speed: kmh === undefined ? '–' : `${kmh} km/h`,
      heading: dev.hdg === undefined ? '–' : `${Math.round(dev.hdg)}°`,
      battery: dev.batt === undefined ? '–' : `${Math.round(dev.batt)}%`,
      accuracy: dev.acc === undefined ? '–' : `± ${Math.round(dev.acc)} m`,
      altitude: dev.alt === undefined ? '–' : `${Math.round(dev.alt)} m`,
      groups: [...dev.groups].join(', '),
    };
    box.classList.toggle('offline', !dev.online);
    for (const [k, v] of Object.entries(fields)) {
      const el = box.querySelector(`[data-field="${k}"]`);
      if (el && el.textContent !== v) el.textContent = v;
    }
  }

  select(id) {
    this.selectedId = id;
    this.refresh();
  }

  /** Scrolls the list so that device `id` is in view (after a click on the map). */
  reveal(id) {
    const i = this.items.findIndex((d) => d.id === id);
    if (i < 0) return;
    const list = this.els.list;
    const top = i * ROW_HEIGHT;
    if (top < list.scrollTop || top + ROW_HEIGHT > list.scrollTop + list.clientHeight) {
      list.scrollTop = Math.max(0, top - list.clientHeight / 2);
    }
  }
}

function ago(ms) {
  const age = formatAge(ms);
  return age === 'now' || age === '–' ? age : `${age} ago`;
}

function set(row, cache, key, value, apply) {
  if (cache[key] !== value) {
    cache[key] = value;
    apply(value);
  }
}
