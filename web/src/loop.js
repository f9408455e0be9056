// The animation loop: each frame applies what the inbox holds, keeps the followed device
// centred, repaints the device layer when something visible changed and updates the tooltip;
// twice a second it refreshes the panel and the connection indicator; once a second it
// measures the frame rate. It also fills `window.beaconStats`.

import { countOnline } from './model.js';

/** How often the panel and the reconnect countdown are refreshed. */
export const PANEL_REFRESH_MS = 500;

/** The figures behind `window.beaconStats` (web/README.md lists them), all at their start. */
export function createStats() {
  return {
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
}

export class FrameLoop {
  /**
   * @param {object} parts `stats` (from createStats), `state` (the model), `drain(now)` (applies
   *                       the inbox), `camera`, `layer`, `tooltip`, `panel`, `header`
   */
  constructor({ stats, state, drain, camera, layer, tooltip, panel, header }) {
    Object.assign(this, { stats, state, drain, camera, layer, tooltip, panel, header });
    /** Frames, repaints and repaint time since `windowStart`, for the once-a-second figures. */
    this.frames = 0;
    this.draws = 0;
    this.drawTime = 0;
    this.windowStart = performance.now();
    this.lastPanelAt = 0;
    this.tick = this.tick.bind(this);
  }

  start() {
    requestAnimationFrame(this.tick);
  }

  tick(now) {
    const stats = this.stats;
    this.frames += 1;
    this.drain(now);
    this.camera.keepFollowed(now);
    const t0 = performance.now();
    if (this.layer.render(now)) {
      this.drawTime += performance.now() - t0;
      this.draws += 1;
    }
    stats.visible = this.layer.visible;
    this.tooltip.update();
    if (now - this.lastPanelAt >= PANEL_REFRESH_MS) {
      this.lastPanelAt = now;
      this.panel.refresh(this.state);
      this.header.renderConn();
      const c = countOnline(this.state.devices.values());
      stats.devices = c.total;
      stats.online = c.online;
      stats.updates = this.state.updates;
    }
    if (now - this.windowStart >= 1000) {
      stats.fps = Math.round((this.frames * 1000) / (now - this.windowStart));
      stats.paintMs = this.draws ? Math.round((this.drawTime / this.draws) * 10) / 10 : 0;
      stats.paints = Math.round((this.draws * 1000) / (now - this.windowStart));
      this.header.showFps(stats.fps);
      this.frames = 0;
      this.draws = 0;
      this.drawTime = 0;
      this.windowStart = now;
    }
    requestAnimationFrame(this.tick);
  }
}
