// The notice over the map: a line of text that explains what went wrong (a server error, an
// ignored URL parameter, a connection that keeps failing) and hides itself after a while, or
// stays until the connection is live again.

export class Notice {
  /** @param {HTMLElement} el the notice element (`#notice`) */
  constructor(el) {
    this.el = el;
    /** Hides the current notice when it runs out; null for a notice that stays. */
    this.timer = null;
    /** Whether the notice shown waits for the connection to be live again. */
    this.sticky = false;
  }

  /** Shows `text` for `ms` milliseconds (0: until replaced); `kind` is `error` or `warn`. */
  show(text, kind = 'error', ms = 6000) {
    const el = this.el;
    el.textContent = text;
    el.dataset.kind = kind;
    el.hidden = false;
    clearTimeout(this.timer);
    if (ms > 0) this.timer = setTimeout(() => (el.hidden = true), ms);
  }

  /** An error that stays until {@link clearSticky} (the connection is live again). */
  showSticky(text) {
    this.show(text, 'error', 0);
    this.sticky = true;
  }

  /** Hides a sticky notice; a timed one runs its course. */
  clearSticky() {
    if (this.sticky) {
      this.sticky = false;
      this.el.hidden = true;
    }
  }
}
