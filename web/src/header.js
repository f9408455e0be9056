// The header bar: the watched groups, the RTT and frame rate, and the connection indicator
// (connecting / live / reconnecting in N s), with the notices that explain a connection that
// keeps failing.

/** Failed upgrades in a row after which the page says it cannot connect. */
const REFUSED_NOTICE_AFTER = 3;

export class Header {
  /**
   * @param {object} els  DOM elements: groups, conn, connText, rtt, fps
   * @param {object} opts `notice` (a Notice); `hasToken()` whether a token is set
   */
  constructor(els, { notice, hasToken }) {
    this.els = els;
    this.notice = notice;
    this.hasToken = hasToken;
    /** The last status the link reported (see `Link`'s `onStatus`). */
    this.link = { state: 'connecting' };
    /** Attempts in a row that failed at the upgrade (server down, or the token refused). */
    this.refusedInRow = 0;
  }

  /** One chip per watched group. */
  showGroups(groups) {
    this.els.groups.replaceChildren(
      ...groups.map((g) => {
        const chip = document.createElement('span');
        chip.className = 'chip';
        chip.textContent = g;
        return chip;
      }),
    );
  }

  /** Takes a status from the link: shows it, and explains a connection that keeps failing. */
  showLink(info) {
    this.link = info;
    this.renderConn();
    if (info.state === 'live') {
      this.refusedInRow = 0;
      this.notice.clearSticky();
    } else if (info.state === 'reconnecting') {
      if (info.closeCode === 1008) {
        this.notice.showSticky('The server closed the connection (policy): the access token may have expired.');
      }
      this.refusedInRow = info.opened ? 0 : this.refusedInRow + 1;
      if (this.refusedInRow === REFUSED_NOTICE_AFTER) {
        this.notice.showSticky(
          this.hasToken()
            ? 'Cannot connect to the live feed: the server is down or refuses this access token.'
            : 'Cannot connect to the live feed: the server is down, or it requires an access token (key button, top right).',
        );
      }
    }
  }

  /** A new token: the failures counted so far were about the old one. */
  tokenChanged() {
    this.refusedInRow = 0;
  }

  /** Redraws the indicator; called again on a timer so the reconnect countdown ticks. */
  renderConn() {
    const el = this.els.conn;
    const info = this.link;
    const s = info.state;
    el.dataset.state = s;
    let text = s;
    if (s === 'reconnecting' && info.retryAt) {
      const secs = Math.max(0, Math.ceil((info.retryAt - Date.now()) / 1000));
      text = secs > 0 ? `reconnecting in ${secs} s` : 'reconnecting';
    }
    if (this.els.connText.textContent !== text) this.els.connText.textContent = text;
    el.title = info.closeCode ? `last close code ${info.closeCode}${info.reason ? `: ${info.reason}` : ''}` : '';
  }

  showRtt(rtt) {
    this.els.rtt.textContent = `${rtt} ms`;
  }

  showFps(fps) {
    this.els.fps.textContent = String(fps);
  }
}
