// Geometry of the map: the Web Mercator projection the renderer draws in, and the bounds of a
// set of devices for fit-all.
//
// Pure: plain numbers in, plain numbers out; no DOM and no map library, so `node --test
// web/test/` exercises it directly.

/** Latitude beyond which Web Mercator is not defined (the square world of map tiles). */
const MAX_MERCATOR_LAT = 85.0511287798;

/** Latitude and longitude to normalised Web Mercator, both in [0, 1], y growing southwards. */
export function toMercator(lat, lon) {
  const clamped = Math.max(-MAX_MERCATOR_LAT, Math.min(MAX_MERCATOR_LAT, lat));
  const sin = Math.sin((clamped * Math.PI) / 180);
  return {
    x: (lon + 180) / 360,
    y: 0.5 - Math.log((1 + sin) / (1 - sin)) / (4 * Math.PI),
  };
}

/** Inverse of {@link toMercator}. */
export function fromMercator(x, y) {
  const lon = x * 360 - 180;
  const lat = (Math.atan(Math.sinh(Math.PI * (1 - 2 * y))) * 180) / Math.PI;
  return { lat, lon };
}

/** Bounds of a set of devices (anything with `lat` and `lon`), or null when there are none. */
export function deviceBounds(devices) {
  let south = Infinity;
  let west = Infinity;
  let north = -Infinity;
  let east = -Infinity;
  for (const dev of devices) {
    south = Math.min(south, dev.lat);
    north = Math.max(north, dev.lat);
    west = Math.min(west, dev.lon);
    east = Math.max(east, dev.lon);
  }
  if (south === Infinity) return null;
  return { south, west, north, east };
}
