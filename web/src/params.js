// Page settings from the URL, and the WebSocket URL built from them. No DOM: the caller passes
// the query string and the page's location parts, so this is testable in Node.

/** Tile template used when `?tiles=` is absent. */
export const DEFAULT_TILES = 'https://tile.openstreetmap.org/{z}/{x}/{y}.png';
export const DEFAULT_ATTRIBUTION =
  '&copy; <a href="https://www.openstreetmap.org/copyright">OpenStreetMap</a> contributors';
export const DEFAULT_GROUPS = ['demo'];

const ID_RE = /^[A-Za-z0-9._:@-]{1,64}$/;

/** Whether `s` is a valid device or group id (protocol.md, "Words"). */
export function isValidId(s) {
  return typeof s === 'string' && ID_RE.test(s);
}

/** A random viewer id such as `viewer-k3f9`. */
export function randomViewerId(random = Math.random) {
  const alphabet = 'abcdefghijklmnopqrstuvwxyz0123456789';
  let s = '';
  for (let i = 0; i < 4; i += 1) s += alphabet[Math.floor(random() * alphabet.length)];
  return `viewer-${s}`;
}

/**
 * Reads the page's settings from its query string.
 * Returns `{groups, id, token, tiles, attribution, problems}`; `tiles` is null for `?tiles=none`,
 * and `problems` lists the parameters that were ignored and why.
 */
export function parseParams(search, random = Math.random) {
  const q = new URLSearchParams(search);
  const problems = [];

  let groups = DEFAULT_GROUPS;
  const rawGroups = q.get('groups');
  if (rawGroups !== null) {
    const listed = rawGroups
      .split(',')
      .map((g) => g.trim())
      .filter((g) => g !== '');
    const valid = [...new Set(listed.filter(isValidId))];
    for (const g of listed) if (!isValidId(g)) problems.push(`group "${g}" is not a valid id`);
    if (valid.length > 0) groups = valid;
  }

  let id = q.get('id');
  if (id !== null && !isValidId(id)) {
    problems.push(`id "${id}" is not a valid id`);
    id = null;
  }
  if (id === null || id === '') id = randomViewerId(random);

  const token = (q.get('access_token') || '').trim();

  let tiles = DEFAULT_TILES;
  let attribution = DEFAULT_ATTRIBUTION;
  const rawTiles = q.get('tiles');
  if (rawTiles !== null) {
    const t = rawTiles.trim();
    if (t === '' || t.toLowerCase() === 'none') {
      tiles = null;
    } else if (/^(https?:)?\/\//i.test(t) || t.startsWith('/')) {
      tiles = t;
      attribution = q.get('attribution') || '';
    } else {
      problems.push('tiles must be an http(s) URL template or "none"');
    }
  }

  return { groups, id, token, tiles, attribution, problems };
}

/**
 * The socket URL for this page: same host, `wss:` on an `https:` page. The query always names
 * the viewer (`role`, `id`, `groups`: the identity when authentication is off) and carries the
 * token when there is one (the identity when authentication is on), so the same page works
 * whichever way the server runs.
 */
export function socketUrl({ protocol, host }, { groups, id, token }) {
  const scheme = protocol === 'https:' ? 'wss:' : 'ws:';
  const q = new URLSearchParams();
  q.set('role', 'viewer');
  q.set('id', id);
  q.set('groups', groups.join(','));
  if (token) q.set('access_token', token);
  // URLSearchParams escapes ',' and ':'; ids never need escaping otherwise, and the protocol's
  // example keeps the comma literal.
  const query = q.toString().replace(/%2C/gi, ',');
  return `${scheme}//${host}/v1/ws?${query}`;
}
