// The access token: taken from `?access_token=` (then kept for the tab's session and removed
// from the address bar, out of bookmarks, screenshots and history) or set with the key button's
// form in the header.

const TOKEN_KEY = 'beacon.access_token';

export class AccessToken {
  /** @param {string} fromUrl the token of the page's URL, or '' */
  constructor(fromUrl) {
    /** The token sent with the next connection; '' for none. */
    this.value = fromUrl || sessionStorage.getItem(TOKEN_KEY) || '';
    if (fromUrl) {
      sessionStorage.setItem(TOKEN_KEY, fromUrl);
      const url = new URL(window.location.href);
      url.searchParams.delete('access_token');
      window.history.replaceState(null, '', url);
    }
  }

  /** Replaces the token ('' to clear it), for this tab's session. */
  set(value) {
    this.value = value;
    if (value) sessionStorage.setItem(TOKEN_KEY, value);
    else sessionStorage.removeItem(TOKEN_KEY);
  }
}

/**
 * Wires the key button and its form to `token`: the button opens the form, Connect sets the
 * token, Clear removes it; either closes the form and calls `onChange()` (which reconnects).
 *
 * @param {object} els `button`, `form`, `input`, `clear`
 */
export function bindTokenForm({ button, form, input, clear }, token, onChange) {
  input.value = token.value;
  button.classList.toggle('active', token.value !== '');
  button.addEventListener('click', () => {
    form.hidden = !form.hidden;
    button.setAttribute('aria-expanded', String(!form.hidden));
    if (!form.hidden) input.focus();
  });
  const set = (value) => {
    token.set(value);
    button.classList.toggle('active', token.value !== '');
    form.hidden = true;
    button.setAttribute('aria-expanded', 'false');
    onChange();
  };
  form.addEventListener('submit', (ev) => {
    ev.preventDefault();
    set(input.value.trim());
  });
  clear.addEventListener('click', () => {
    input.value = '';
    set('');
  });
}
