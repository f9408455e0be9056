// The Leaflet map: its tiles (or, without them, a coordinate grid drawn by the device layer),
// the device layer on top, the fit-all button, and the note shown when tiles cannot load.

import * as L from 'leaflet/dist/leaflet-src.esm.js';

import { DeviceLayer } from './render.js';

const FIT_ICON =
  '<svg viewBox="0 0 24 24" aria-hidden="true"><path d="M4 9V4h5M15 4h5v5M20 15v5h-5M9 20H4v-5" fill="none" stroke="currentColor" stroke-width="2" stroke-linecap="round" stroke-linejoin="round"/></svg>';

/** The fit-all button under the zoom buttons; `options.onClick` does the fitting. */
const FitControl = L.Control.extend({
  options: { position: 'topleft', onClick: () => {} },
  onAdd() {
    const box = L.DomUtil.create('div', 'leaflet-bar beacon-fit');
    const btn = L.DomUtil.create('a', '', box);
    btn.href = '#';
    btn.id = 'fit-all';
    btn.title = 'Show all devices';
    btn.setAttribute('role', 'button');
    btn.setAttribute('aria-label', 'Show all devices');
    btn.innerHTML = FIT_ICON;
    L.DomEvent.disableClickPropagation(box);
    L.DomEvent.on(btn, 'click', (ev) => {
      L.DomEvent.preventDefault(ev);
      this.options.onClick();
    });
    return box;
  },
});

export class MapView {
  /**
   * @param {string} id   id of the map's element
   * @param {object} opts `tiles` (URL template, or null for none), `attribution`, `state` (what
   *                      the device layer draws), `onFitAll()` for the fit-all button
   */
  constructor(id, { tiles, attribution, state, onFitAll }) {
    /** Tiles loaded and failed so far: tiles that never load mean no tiles at all. */
    this.tilesLoaded = 0;
    this.tilesFailed = 0;

    const map = L.map(id, {
      zoomControl: true,
      worldCopyJump: false,
      minZoom: 2,
      maxZoom: tiles ? 19 : 20,
      zoomSnap: 0.25,
      wheelPxPerZoomLevel: 90,
    }).setView([20, 0], 2);
    map.attributionControl.setPrefix(false);
    this.map = map;

    if (tiles) {
      const layer = L.tileLayer(tiles, { maxZoom: 19, attribution, crossOrigin: false });
      layer.on('tileload', () => {
        this.tilesLoaded += 1;
        this.updateTileStatus();
      });
      layer.on('tileerror', () => {
        this.tilesFailed += 1;
        this.updateTileStatus();
      });
      layer.addTo(map);
    } else {
      map.attributionControl.addAttribution('No map tiles');
    }

    /** The canvas layer that draws every device. */
    this.layer = new DeviceLayer(state, { showGrid: !tiles });
    this.layer.addTo(map);

    new FitControl({ onClick: onFitAll }).addTo(map);

    const status = L.DomUtil.create('div', 'tile-status');
    status.id = 'tile-status';
    status.hidden = true;
    status.textContent = 'Map tiles unavailable · showing a coordinate grid';
    map.getContainer().appendChild(status);
    this.tileStatus = status;
  }

  /** Tiles that never load (offline, blocked): show the coordinate grid instead. */
  updateTileStatus() {
    const offline = this.tilesFailed > 0 && this.tilesLoaded === 0;
    document.body.classList.toggle('tiles-offline', offline);
    if (offline !== this.layer.showGrid) {
      this.layer.showGrid = offline;
      this.layer.invalidate();
    }
    this.tileStatus.hidden = !offline;
  }
}
