// What the map looks at: one followed device, kept in the centre as it moves, or all devices
// (fit-all, and once when the first devices arrive). Clicking a marker or a row follows it;
// clicking it again, dragging the map, fit-all or the stop buttons stop following.

import { deviceBounds, fromMercator } from './geometry.js';
import { glidePosition } from './model.js';

export class Camera {
  /**
   * @param {object} parts `map` (Leaflet), `layer` (DeviceLayer), `panel` (DevicePanel),
   *                       `state` (the model), `badge` and `badgeName` (the "Following" badge)
   */
  constructor({ map, layer, panel, state, badge, badgeName }) {
    this.map = map;
    this.layer = layer;
    this.panel = panel;
    this.state = state;
    this.badge = badge;
    this.badgeName = badgeName;
    /** The followed device's id, or null. */
    this.followId = null;
    /** Whether the view was fitted to the first devices (done once, not on every resync). */
    this.fitted = false;

    map.on('dragstart', () => this.stopFollowing());
    map.on('click', (e) => {
      const id = layer.hitTest(e.containerPoint.x, e.containerPoint.y);
      if (id) this.follow(id);
    });
  }

  /** Follows device `id`, or stops following it if it is already followed. */
  follow(id) {
    if (this.followId === id) {
      this.stopFollowing();
      return;
    }
    this.followId = id;
    this.layer.followId = id;
    this.layer.invalidate();
    this.panel.select(id);
    this.panel.reveal(id);
    this.badgeName.textContent = id;
    this.badge.hidden = false;
    const dev = this.state.devices.get(id);
    if (dev) {
      const p = glidePosition(dev, performance.now());
      const ll = fromMercator(p.x, p.y);
      this.map.setView([ll.lat, ll.lon], Math.max(this.map.getZoom(), 15), { animate: false });
    }
  }

  stopFollowing() {
    if (this.followId === null) return;
    this.followId = null;
    this.layer.followId = null;
    this.layer.invalidate();
    this.panel.select(null);
    this.badge.hidden = true;
  }

  /** Stops following and shows every device. */
  fitAll() {
    this.stopFollowing();
    const b = deviceBounds(this.state.devices.values());
    if (!b) return;
    const map = this.map;
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

  /** After the state changed: let go of a device that is gone, fit the first devices in view. */
  stateChanged() {
    // The followed device left the watched groups (or its retention ended).
    if (this.followId !== null && !this.state.devices.has(this.followId)) this.stopFollowing();
    if (!this.fitted && this.state.devices.size > 0) {
      this.fitted = true;
      this.fitAll();
    }
  }

  /** Every frame: pans so that the followed device, where it is drawn at `now`, is centred. */
  keepFollowed(now) {
    if (this.followId === null || this.layer.zooming) return;
    const dev = this.state.devices.get(this.followId);
    if (!dev) return;
    const p = glidePosition(dev, now);
    const ll = fromMercator(p.x, p.y);
    const target = this.map.latLngToContainerPoint([ll.lat, ll.lon]);
    const size = this.map.getSize();
    if (Math.abs(target.x - size.x / 2) > 0.5 || Math.abs(target.y - size.y / 2) > 0.5) {
      this.map.panTo([ll.lat, ll.lon], { animate: false });
    }
  }
}
