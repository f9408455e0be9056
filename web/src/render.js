// One canvas over the map that draws every device: trails, markers (arrows when a heading is
// known), labels, the followed device's highlight and, when there are no tiles, a coordinate
// grid. One canvas instead of one DOM node per marker keeps 5,000 moving devices cheap: a frame
// is a handful of batched paths, whatever the count.

import * as L from 'leaflet/dist/leaflet-src.esm.js';
import { fromMercator, toMercator } from './geometry.js';
import { glidePosition } from './model.js';

const TILE = 256;
const COLORS = {
  online: '#16a34a',
  onlineDark: '#0f7a37',
  offline: '#9ca3af',
  offlineDark: '#6b7280',
  trailOnline: 'rgba(22, 163, 74, 0.45)',
  trailOffline: 'rgba(107, 114, 128, 0.35)',
  follow: '#2563eb',
  grid: 'rgba(71, 85, 105, 0.13)',
  gridLabel: 'rgba(51, 65, 85, 0.55)',
  label: '#0f172a',
};

/** Above this many visible devices, only the followed one gets a trail and a label. */
export const DETAIL_LIMIT = 400;

const LABEL_FONT = '600 11px system-ui, -apple-system, "Segoe UI", Roboto, sans-serif';
/** Cell size in pixels of the grid that keeps labels from overlapping. */
const LABEL_CELL = 6;

/** From this many markers on screen, they are drawn pixel by pixel (see `blitMarkers`). */
export const PIXEL_PATH_MIN = 600;

/** Shortest interval between two repaints while every marker moves by less than a pixel. */
export const SUBPIXEL_REPAINT_MS = 40;

const GRID_STEPS = [
  45, 30, 20, 10, 5, 2, 1, 0.5, 0.2, 0.1, 0.05, 0.02, 0.01, 0.005, 0.002, 0.001, 0.0005, 0.0002,
  0.0001,
];

export const DeviceLayer = L.Layer.extend({
  initialize(state, options = {}) {
    this.state = state;
    this.followId = null;
    this.hoverId = null;
    this.showGrid = Boolean(options.showGrid);
    this.dirty = true;
    this.zooming = false;
    // Screen positions of the last frame, for hit tests.
    this.hitIds = [];
    this.hitX = new Float32Array(0);
    this.hitY = new Float32Array(0);
    this.shown = [];
    this.visible = 0;
    this.paints = 0;
    this.paintedCount = -1;
    this.paintedTime = 0;
    this.version = -1;
  },

  onAdd(map) {
    const canvas = document.createElement('canvas');
    canvas.className = 'beacon-canvas';
    if (map.options.zoomAnimation && L.Browser.any3d) canvas.classList.add('leaflet-zoom-animated');
    this.canvas = canvas;
    this.ctx = canvas.getContext('2d');
    this.getPane().appendChild(canvas);
    map.on('move', this.invalidate, this);
    map.on('moveend zoomend viewreset resize', this.reset, this);
    map.on('zoomanim', this.onZoomAnim, this);
    this.reset();
  },

  onRemove(map) {
    map.off('move', this.invalidate, this);
    map.off('moveend zoomend viewreset resize', this.reset, this);
    map.off('zoomanim', this.onZoomAnim, this);
    this.canvas.remove();
  },

  invalidate() {
    this.dirty = true;
  },

  reset() {
    const map = this._map;
    if (!map) return;
    this.zooming = false;
    const size = map.getSize();
    const dpr = window.devicePixelRatio || 1;
    const w = Math.max(1, Math.round(size.x * dpr));
    const h = Math.max(1, Math.round(size.y * dpr));
    if (this.canvas.width !== w || this.canvas.height !== h) {
      this.canvas.width = w;
      this.canvas.height = h;
      this.canvas.style.width = `${size.x}px`;
      this.canvas.style.height = `${size.y}px`;
    }
    this.dpr = dpr;
    this.dirty = true;
  },

  // During a zoom animation Leaflet scales the map pane with CSS; the canvas follows with the
  // same transform until `zoomend` redraws it at the new zoom.
  onZoomAnim(e) {
    const map = this._map;
    this.zooming = true;
    const scale = map.getZoomScale(e.zoom, map.getZoom());
    const size = map.getSize();
    const panePos = L.DomUtil.getPosition(map.getPane('mapPane'));
    const center = map.project(e.center, e.zoom);
    const newOrigin = L.point(
      Math.round(center.x - size.x / 2 + panePos.x),
      Math.round(center.y - size.y / 2 + panePos.y),
    );
    const offset = L.point(this.originX * scale - newOrigin.x, this.originY * scale - newOrigin.y);
    L.DomUtil.setTransform(this.canvas, offset, scale);
  },

  /** World pixel (at the current zoom) of the canvas's top-left corner, and the scale. */
  frame() {
    const map = this._map;
    const topLeft = map.containerPointToLayerPoint([0, 0]);
    const origin = map.getPixelOrigin();
    return {
      topLeft,
      ox: origin.x + topLeft.x,
      oy: origin.y + topLeft.y,
      scale: TILE * 2 ** map.getZoom(),
      size: map.getSize(),
    };
  },

  /**
   * Called on every animation frame with the local time. Places every device, then paints only
   * when the picture would change: the view moved, the data changed, a marker entered or left
   * the screen, or a marker moved by a pixel or more. While every marker moves less than a pixel
   * per frame (a zoomed-out fleet), repaints are spaced by at least SUBPIXEL_REPAINT_MS: the
   * picture differs by under a pixel, and the page's main thread stays free.
   * Returns true when it painted.
   */
  render(now) {
    const map = this._map;
    if (!map || this.zooming) return false;
    const { topLeft, ox, oy, scale, size } = this.frame();
    const viewChanged =
      ox !== this.originX || oy !== this.originY || scale !== this.scale || size.x !== this.width || size.y !== this.height;

    const devices = this.state.devices;
    const n = devices.size;
    if (this.hitX.length < n) {
      this.hitX = new Float32Array(n * 2);
      this.hitY = new Float32Array(n * 2);
      this.shown = new Array(n * 2);
    }
    const ids = this.hitIds;
    const shown = this.shown;
    ids.length = 0;
    const margin = 24;
    let followed = null;
    let moved = 0;
    for (const dev of devices.values()) {
      const p = glidePosition(dev, now);
      const sx = p.x * scale - ox;
      const sy = p.y * scale - oy;
      if (dev.id === this.followId) followed = { dev, sx, sy };
      if (sx < -margin || sy < -margin || sx > size.x + margin || sy > size.y + margin) continue;
      const i = ids.length;
      ids.push(dev.id);
      this.hitX[i] = sx;
      this.hitY[i] = sy;
      shown[i] = dev;
      // Screen position at the last paint; kept on the device by this renderer only.
      const d = dev.paintedAt === this.paints ? Math.max(Math.abs(sx - dev.px), Math.abs(sy - dev.py)) : Infinity;
      if (d > moved) moved = d;
    }
    const count = ids.length;
    this.visible = count;
    const needed =
      this.dirty ||
      viewChanged ||
      this.state.version !== this.version ||
      count !== this.paintedCount ||
      moved >= 1 ||
      (moved > 0.05 && now - this.paintedTime >= SUBPIXEL_REPAINT_MS);
    if (!needed) return false;

    this.dirty = false;
    this.originX = ox;
    this.originY = oy;
    this.scale = scale;
    this.width = size.x;
    this.height = size.y;
    this.version = this.state.version;
    this.paintedCount = count;
    this.paintedTime = now;
    this.paints += 1;
    for (let i = 0; i < count; i += 1) {
      const dev = shown[i];
      dev.px = this.hitX[i];
      dev.py = this.hitY[i];
      dev.paintedAt = this.paints;
    }
    L.DomUtil.setPosition(this.canvas, topLeft);
    this.paint(shown, count, followed, ox, oy, scale, size);
    return true;
  },

  paint(shown, count, followed, ox, oy, scale, size) {
    const ctx = this.ctx;
    const dpr = this.dpr;
    const detailed = count <= DETAIL_LIMIT;
    const small = count > 2000;
    const r = small ? 4 : 6;
    const sizeIndex = small ? 0 : 1;
    ctx.setTransform(dpr, 0, 0, dpr, 0, 0);

    if (count >= PIXEL_PATH_MIN) {
      // Many markers: write their pixels straight into an ImageData (one put), then draw the
      // trail and the grid *behind* them with `destination-over`.
      this.blitMarkers(shown, count, sizeIndex);
      ctx.globalCompositeOperation = 'destination-over';
      if (followed) this.drawFollowedTrail(ctx, followed, ox, oy, scale);
      if (this.showGrid) this.drawGrid(ctx, ox, oy, scale, size);
      ctx.globalCompositeOperation = 'source-over';
    } else {
      ctx.clearRect(0, 0, size.x, size.y);
      if (this.showGrid) this.drawGrid(ctx, ox, oy, scale, size);
      // Trails: one path per colour.
      ctx.lineWidth = 2;
      ctx.lineJoin = 'round';
      ctx.lineCap = 'round';
      if (detailed) {
        for (const online of [false, true]) {
          ctx.beginPath();
          for (let i = 0; i < count; i += 1) {
            const dev = shown[i];
            if (dev.online !== online || dev.id === this.followId) continue;
            this.traceTrail(ctx, dev, this.hitX[i], this.hitY[i], ox, oy, scale);
          }
          ctx.strokeStyle = online ? COLORS.trailOnline : COLORS.trailOffline;
          ctx.stroke();
        }
      }
      if (followed) this.drawFollowedTrail(ctx, followed, ox, oy, scale);
      // Markers: offline below online, each a blit of a pre-drawn sprite (an arrow per 5
      // degrees of heading, or a dot), far cheaper for a software canvas than filling paths.
      for (const online of [false, true]) {
        const set = this.sprites(online, sizeIndex);
        for (let i = 0; i < count; i += 1) {
          const dev = shown[i];
          if (dev.online !== online) continue;
          const sprite = dev.hdg === undefined ? set.dot : set.arrows[headingBucket(dev.hdg)];
          ctx.drawImage(
            sprite.canvas,
            Math.round(this.hitX[i] - sprite.half),
            Math.round(this.hitY[i] - sprite.half),
            sprite.css,
            sprite.css,
          );
        }
      }
    }

    if (followed) this.drawFollowed(ctx, followed.dev, followed.sx, followed.sy, r);

    // Labels: when few enough to read, plus the followed and hovered devices. A label that
    // would overlap one already placed is left out (the followed and hovered ones go first).
    ctx.font = LABEL_FONT;
    ctx.textBaseline = 'middle';
    ctx.lineWidth = 3;
    ctx.strokeStyle = 'rgba(255, 255, 255, 0.92)';
    ctx.lineJoin = 'round';
    const cols = Math.ceil(size.x / LABEL_CELL) + 1;
    const rows = Math.ceil(size.y / LABEL_CELL) + 1;
    if (!this.labelGrid || this.labelGrid.length < cols * rows) this.labelGrid = new Uint8Array(cols * rows);
    const grid = this.labelGrid;
    grid.fill(0);
    const order = [];
    for (let i = 0; i < count; i += 1) {
      const id = shown[i].id;
      if (id === this.followId || id === this.hoverId) order.unshift(i);
      else if (detailed) order.push(i);
    }
    for (const i of order) {
      const dev = shown[i];
      const x = this.hitX[i] + r + 5;
      const y = this.hitY[i];
      const w = this.labelWidth(ctx, dev.id);
      const c0 = Math.max(0, Math.floor(x / LABEL_CELL));
      const c1 = Math.min(cols - 1, Math.floor((x + w) / LABEL_CELL));
      const r0 = Math.max(0, Math.floor((y - 7) / LABEL_CELL));
      const r1 = Math.min(rows - 1, Math.floor((y + 7) / LABEL_CELL));
      let free = true;
      for (let row = r0; row <= r1 && free; row += 1) {
        for (let col = c0; col <= c1; col += 1) {
          if (grid[row * cols + col]) {
            free = false;
            break;
          }
        }
      }
      const special = dev.id === this.followId || dev.id === this.hoverId;
      if (!free && !special) continue;
      for (let row = r0; row <= r1; row += 1) grid.fill(1, row * cols + c0, row * cols + c1 + 1);
      ctx.fillStyle = dev.online ? COLORS.label : COLORS.offlineDark;
      ctx.strokeText(dev.id, x, y);
      ctx.fillText(dev.id, x, y);
    }
  },

  /** Width of a label in pixels, measured once per id. */
  labelWidth(ctx, id) {
    this.widths = this.widths || new Map();
    let w = this.widths.get(id);
    if (w === undefined) {
      w = ctx.measureText(id).width;
      if (this.widths.size > 20000) this.widths.clear();
      this.widths.set(id, w);
    }
    return w;
  },

  /** Sprites for one colour and size, drawn on first use and kept. */
  sprites(online, sizeIndex) {
    const dpr = this.dpr || 1;
    const key = `${online ? 1 : 0}:${sizeIndex}:${dpr}`;
    this.spriteCache = this.spriteCache || new Map();
    let set = this.spriteCache.get(key);
    if (set) return set;
    const r = sizeIndex === 0 ? 4 : 6;
    const fill = online ? COLORS.online : COLORS.offline;
    const lineWidth = sizeIndex === 0 ? 1 : 1.5;
    const arrowLen = sizeIndex === 0 ? r * 2 : r * 2.5;
    const css = Math.ceil(arrowLen * 1.5 + 4);
    const draw = (build) => {
      const canvas = document.createElement('canvas');
      canvas.width = Math.ceil(css * dpr);
      canvas.height = Math.ceil(css * dpr);
      const c = canvas.getContext('2d', { willReadFrequently: true });
      c.scale(dpr, dpr);
      const p = new Path2D();
      build(p, css / 2);
      c.fillStyle = fill;
      c.strokeStyle = '#ffffff';
      c.lineWidth = lineWidth;
      c.lineJoin = 'round';
      c.fill(p);
      c.stroke(p);
      return { canvas, css, half: css / 2 };
    };
    set = {
      dot: draw((p, m) => p.arc(m, m, r, 0, Math.PI * 2)),
      arrows: [],
    };
    for (let b = 0; b < HEADING_BUCKETS; b += 1) {
      set.arrows.push(draw((p, m) => addArrow(p, m, m, (b * 360) / HEADING_BUCKETS, arrowLen)));
    }
    this.spriteCache.set(key, set);
    return set;
  },

  drawFollowedTrail(ctx, followed, ox, oy, scale) {
    ctx.beginPath();
    this.traceTrail(ctx, followed.dev, followed.sx, followed.sy, ox, oy, scale);
    ctx.strokeStyle = 'rgba(37, 99, 235, 0.6)';
    ctx.lineWidth = 3;
    ctx.lineJoin = 'round';
    ctx.lineCap = 'round';
    ctx.stroke();
  },

  /**
   * Draws the markers by copying each sprite's visible pixels into one ImageData, then puts it
   * on the canvas (replacing what was there). A canvas call per marker costs microseconds in
   * a software-rendered browser; a few dozen integer writes cost far less.
   */
  blitMarkers(shown, count, sizeIndex) {
    const W = this.canvas.width;
    const H = this.canvas.height;
    if (!this.image || this.image.width !== W || this.image.height !== H) {
      this.image = this.ctx.createImageData(W, H);
      this.pixels = new Uint32Array(this.image.data.buffer);
    }
    const buf = this.pixels;
    buf.fill(0);
    const dpr = this.dpr;
    for (const online of [false, true]) {
      const set = this.sprites(online, sizeIndex);
      for (let i = 0; i < count; i += 1) {
        const dev = shown[i];
        if (dev.online !== online) continue;
        const sprite = dev.hdg === undefined ? set.dot : set.arrows[headingBucket(dev.hdg)];
        const px = spritePixels(sprite);
        const x0 = Math.round(this.hitX[i] * dpr - px.size / 2);
        const y0 = Math.round(this.hitY[i] * dpr - px.size / 2);
        const { dx, dy, val, alpha } = px;
        const inside = x0 >= 0 && y0 >= 0 && x0 + px.size <= W && y0 + px.size <= H;
        for (let k = 0; k < val.length; k += 1) {
          const x = x0 + dx[k];
          const y = y0 + dy[k];
          if (!inside && (x < 0 || y < 0 || x >= W || y >= H)) continue;
          const at = y * W + x;
          // Opaque pixels overwrite; anti-aliased edges keep the more opaque of the two.
          if (alpha[k] === 255 || buf[at] >>> 24 < alpha[k]) buf[at] = val[k];
        }
      }
    }
    this.ctx.putImageData(this.image, 0, 0);
  },

  traceTrail(ctx, dev, sx, sy, ox, oy, scale) {
    const trail = dev.trail;
    // The newest trail point is where the marker is heading; the line ends at the marker.
    const upto = trail.length - 1;
    if (upto < 1) return;
    ctx.moveTo(trail[0].x * scale - ox, trail[0].y * scale - oy);
    for (let k = 1; k < upto; k += 1) ctx.lineTo(trail[k].x * scale - ox, trail[k].y * scale - oy);
    ctx.lineTo(sx, sy);
  },

  drawFollowed(ctx, dev, x, y, r) {
    ctx.beginPath();
    ctx.arc(x, y, r + 9, 0, Math.PI * 2);
    ctx.fillStyle = 'rgba(37, 99, 235, 0.16)';
    ctx.fill();
    ctx.lineWidth = 2;
    ctx.strokeStyle = COLORS.follow;
    ctx.stroke();
    const p = new Path2D();
    if (dev.hdg !== undefined) addArrow(p, x, y, dev.hdg, r * 2.9);
    else p.arc(x, y, r + 1.5, 0, Math.PI * 2);
    ctx.fillStyle = dev.online ? COLORS.online : COLORS.offline;
    ctx.strokeStyle = '#ffffff';
    ctx.lineWidth = 2;
    ctx.fill(p);
    ctx.stroke(p);
  },

  drawGrid(ctx, ox, oy, scale, size) {
    // Pick a step in degrees that puts lines roughly 90-200 px apart.
    const pxPerDegree = scale / 360;
    let step = GRID_STEPS[0];
    for (const s of GRID_STEPS) {
      if (s * pxPerDegree < 90) break;
      step = s;
    }
    const west = (ox / scale) * 360 - 180;
    const east = ((ox + size.x) / scale) * 360 - 180;
    const north = fromMercator(0, oy / scale).lat;
    const south = fromMercator(0, (oy + size.y) / scale).lat;
    const decimals = Math.max(0, Math.ceil(-Math.log10(step)));
    ctx.beginPath();
    ctx.lineWidth = 1;
    ctx.strokeStyle = COLORS.grid;
    ctx.font = '10px system-ui, -apple-system, "Segoe UI", Roboto, sans-serif';
    ctx.fillStyle = COLORS.gridLabel;
    ctx.textBaseline = 'top';
    const labels = [];
    for (let lon = Math.ceil(west / step) * step; lon <= east; lon += step) {
      if (lon < -180 || lon > 180) continue;
      const x = Math.round(((lon + 180) / 360) * scale - ox) + 0.5;
      ctx.moveTo(x, 0);
      ctx.lineTo(x, size.y);
      labels.push([`${Math.abs(lon).toFixed(decimals)}°${lon < 0 ? 'W' : lon > 0 ? 'E' : ''}`, x + 3, 3]);
    }
    for (let lat = Math.ceil(south / step) * step; lat <= north; lat += step) {
      if (lat < -85 || lat > 85) continue;
      const y = Math.round(toMercator(lat, 0).y * scale - oy) + 0.5;
      ctx.moveTo(0, y);
      ctx.lineTo(size.x, y);
      labels.push([`${Math.abs(lat).toFixed(decimals)}°${lat < 0 ? 'S' : lat > 0 ? 'N' : ''}`, -1, y + 3]);
    }
    ctx.stroke();
    // Longitudes along the top, latitudes along the right edge (the left has the zoom buttons).
    for (const [text, x, y] of labels) {
      if (x < 0) {
        // Keep clear of the attribution in the bottom-right corner.
        if (y < size.y - 28) ctx.fillText(text, size.x - ctx.measureText(text).width - 4, y);
      }
      else if (x + ctx.measureText(text).width < size.x - 4) ctx.fillText(text, x, y);
    }
  },

  /** The device drawn nearest to container point (x, y), within `radius` pixels. */
  hitTest(x, y, radius = 14) {
    let best = null;
    let bestD = radius * radius;
    for (let i = 0; i < this.hitIds.length; i += 1) {
      const dx = this.hitX[i] - x;
      const dy = this.hitY[i] - y;
      const d = dx * dx + dy * dy;
      if (d <= bestD) {
        bestD = d;
        best = this.hitIds[i];
      }
    }
    return best;
  },

  /** Container point where device `id` was drawn in the last frame, or null. */
  screenPoint(id) {
    const i = this.hitIds.indexOf(id);
    return i < 0 ? null : { x: this.hitX[i], y: this.hitY[i] };
  },
});

/** Adds an arrow pointing to `hdg` degrees (0 = north, clockwise) centred on (x, y). */
const HEADING_BUCKETS = 72;

/** The visible pixels of a sprite, read back once: offsets, RGBA values and alphas. */
function spritePixels(sprite) {
  if (sprite.pixels) return sprite.pixels;
  const w = sprite.canvas.width;
  const h = sprite.canvas.height;
  const data = new Uint32Array(sprite.canvas.getContext('2d').getImageData(0, 0, w, h).data.buffer);
  const dx = [];
  const dy = [];
  const val = [];
  const alpha = [];
  for (let i = 0; i < data.length; i += 1) {
    const a = data[i] >>> 24;
    if (a === 0) continue;
    dx.push(i % w);
    dy.push(Math.floor(i / w));
    val.push(data[i]);
    alpha.push(a);
  }
  sprite.pixels = {
    size: w,
    dx: Int16Array.from(dx),
    dy: Int16Array.from(dy),
    val: Uint32Array.from(val),
    alpha: Uint8Array.from(alpha),
  };
  return sprite.pixels;
}

/** Index of the pre-drawn arrow nearest to heading `hdg` (degrees). */
function headingBucket(hdg) {
  const b = Math.round((hdg / 360) * HEADING_BUCKETS) % HEADING_BUCKETS;
  return b < 0 ? b + HEADING_BUCKETS : b;
}

function addArrow(path, x, y, hdg, len) {
  const a = (hdg * Math.PI) / 180;
  const sin = Math.sin(a);
  const cos = Math.cos(a);
  // Arrow in its own frame (pointing up, y down): tip, right wing, notch, left wing.
  const pts = [
    [0, -len * 0.68],
    [len * 0.36, len * 0.5],
    [0, len * 0.22],
    [-len * 0.36, len * 0.5],
  ];
  for (let k = 0; k < pts.length; k += 1) {
    const [px, py] = pts[k];
    const rx = x + px * cos - py * sin;
    const ry = y + px * sin + py * cos;
    if (k === 0) path.moveTo(rx, ry);
    else path.lineTo(rx, ry);
  }
  path.closePath();
}
