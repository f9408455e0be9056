// Text for people: ages and speeds as the panel, the card and the tooltip show them.
//
// Pure: no DOM, so `node --test web/test/` exercises it directly.

/** A short age for the panel: `now`, `12 s`, `4 min`, `3 h`, `2 d`; `–` when unknown. */
export function formatAge(ms) {
  if (!Number.isFinite(ms)) return '–';
  if (ms < 1500) return 'now';
  const s = Math.round(ms / 1000);
  if (s < 60) return `${s} s`;
  const min = Math.floor(s / 60);
  if (min < 60) return `${min} min`;
  const h = Math.floor(min / 60);
  if (h < 48) return `${h} h`;
  return `${Math.floor(h / 24)} d`;
}

/** Metres per second to whole kilometres per hour, or `undefined` when unknown. */
export function speedKmh(spd) {
  return typeof spd === 'number' && Number.isFinite(spd) ? Math.round(spd * 3.6) : undefined;
}
