// The tooltip of the device under the mouse: id, status, age and speed, next to its marker,
// which the device layer draws highlighted.

import { formatAge, speedKmh } from './format.js';
import { lastSeen } from './model.js';

export class DeviceTooltip {
  /**
   * @param {object} parts `map` (Leaflet), `layer` (DeviceLayer), `state` (the model),
   *                       `el` (the tooltip element), `serverNow()` for ages
   */
  constructor({ map, layer, state, el, serverNow }) {
    this.map = map;
    this.layer = layer;
    this.state = state;
    this.el = el;
    this.serverNow = serverNow;
    /** The mouse's container point over the map, or null when it is elsewhere. */
    this.point = null;
    map.on('mousemove', (e) => {
      this.point = e.containerPoint;
    });
    map.on('mouseout', () => {
      this.point = null;
    });
  }

  /** Every frame: finds the device under the mouse (markers move under a still mouse too). */
  update() {
    const layer = this.layer;
    const tip = this.el;
    const id = this.point ? layer.hitTest(this.point.x, this.point.y) : null;
    if (id !== layer.hoverId) {
      layer.hoverId = id;
      layer.invalidate();
      this.map.getContainer().classList.toggle('over-device', id !== null);
    }
    const dev = id ? this.state.devices.get(id) : null;
    if (!dev) {
      tip.hidden = true;
      return;
    }
    const at = layer.screenPoint(id);
    if (!at) return;
    const kmh = speedKmh(dev.spd);
    const age = formatAge(this.serverNow() - lastSeen(dev));
    tip.textContent = `${dev.id} · ${dev.online ? 'online' : 'offline'} · ${age === 'now' ? 'now' : `${age} ago`}${kmh === undefined ? '' : ` · ${kmh} km/h`}`;
    tip.style.transform = `translate(${Math.round(at.x + 14)}px, ${Math.round(at.y - 34)}px)`;
    tip.hidden = false;
  }
}
