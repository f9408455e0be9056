// End-to-end check of the live map page against the real server, in headless Chromium.
//
//   node web/test/e2e.mjs        (BEACON_BIN=path/to/beacon to test another binary)
//
// Starts `beacon serve` on a free loopback port, opens the page, plays a device from Node over
// a WebSocket and checks what a person would see: the device listed and drawn, moving, followed,
// going offline; the page reconnecting and resyncing after a server restart; 200 devices at
// 1 Hz. Prints one line per check and `E2E: N passed, M failed` last; exits non-zero on failure.
//
// `node --test web/test/` also loads this file; there it only registers a skipped test, since
// it needs the server binary and Chromium (test/run.sh runs it for real).

if (process.env.NODE_TEST_CONTEXT) {
  const { test } = await import('node:test');
  test('browser end-to-end check (run: node web/test/e2e.mjs)', { skip: 'needs the server and Chromium' }, () => {});
} else {
  await main();
}

async function main() {
  const { mkdir } = await import('node:fs/promises');
  const { join } = await import('node:path');
  const h = await import('../tools/harness.mjs');
  const { connectDevice, launchBrowser, sleep, startServer, waitFor, webDir } = h;

  const results = [];
  let server = null;
  let browser = null;
  const devices = [];

  async function check(name, fn) {
    const t0 = Date.now();
    try {
      const note = await fn();
      results.push({ name, ok: true });
      console.log(`ok   - ${name} (${Date.now() - t0} ms)${note ? `: ${note}` : ''}`);
    } catch (err) {
      results.push({ name, ok: false });
      console.log(`FAIL - ${name}: ${err && err.message ? err.message : err}`);
    }
  }

  async function cleanup() {
    await Promise.all(devices.map((d) => d.close().catch(() => {})));
    if (browser) await browser.close().catch(() => {});
    if (server) await server.stop().catch(() => {});
  }
  for (const sig of ['SIGINT', 'SIGTERM']) {
    process.on(sig, async () => {
      await cleanup();
      process.exit(130);
    });
  }

  const GROUP = 'e2e';
  const pageErrors = [];
  try {
    server = await startServer();
    console.log(`server pid ${server.pid} on ${server.base}`);
    browser = await launchBrowser({ width: 1280, height: 800 });
    const page = browser.page;
    page.on('pageerror', (err) => pageErrors.push(err.message));
    page.on('console', (m) => {
      if (m.type() === 'error') pageErrors.push(m.text());
    });

    const stats = () => page.evaluate(() => ({ ...window.beaconStats }));
    const dev = (id) => page.evaluate((i) => window.beaconDebug.device(i), id);
    const row = (id) => page.locator(`#list .row:not([hidden])[data-id="${id}"]`);
    // The colour drawn on the map canvas around a container point: 'online', 'offline' or null.
    const markerColour = (pt) =>
      page.evaluate(({ x, y }) => {
        const canvas = document.querySelector('.beacon-canvas');
        const dpr = window.devicePixelRatio || 1;
        const px = canvas.getContext('2d').getImageData(Math.round(x * dpr) - 2, Math.round(y * dpr) - 2, 5, 5).data;
        let green = 0;
        let grey = 0;
        for (let i = 0; i < px.length; i += 4) {
          const [r, g, b, a] = [px[i], px[i + 1], px[i + 2], px[i + 3]];
          if (a < 200) continue;
          if (g > r + 60 && g > b + 40) green += 1;
          else if (Math.abs(r - g) < 20 && Math.abs(g - b) < 24 && r > 120 && r < 200) grey += 1;
        }
        return green > grey ? 'online' : grey > 0 ? 'offline' : null;
      }, pt);

    await check('page loads and the connection goes live', async () => {
      const res = await page.goto(`${server.base}/?groups=${GROUP}&tiles=none`);
      if (!res || res.status() !== 200) throw new Error(`GET / answered ${res && res.status()}`);
      await waitFor('state live', async () => (await stats()).state === 'live');
      const text = await page.locator('#conn-text').textContent();
      if (text !== 'live') throw new Error(`indicator says "${text}"`);
      const chips = await page.locator('#groups .chip').allTextContents();
      if (chips.join(',') !== GROUP) throw new Error(`group chips ${JSON.stringify(chips)}`);
      const empty = await page.locator('#list-empty').textContent();
      return `indicator "live", groups ${chips}, list: "${empty}"`;
    });

    await check('ping is answered and the RTT is shown', async () => {
      await waitFor('an RTT', async () => (await stats()).rtt !== null, { ms: 5000 });
      return `RTT ${await page.locator('#rtt').textContent()}`;
    });

    const car = await connectDevice(server.base, 'car-1', GROUP);
    devices.push(car);
    const first = { lat: 52.52, lon: 13.405, spd: 10, hdg: 90, batt: 81, acc: 5 };
    car.send({ ...first, ts: Date.now() });

    let firstScreen = null;
    await check('the device appears in the panel and on the map', async () => {
      await row('car-1').waitFor({ timeout: 10000 });
      const s = await waitFor('beaconStats.devices = 1', async () => {
        const st = await stats();
        return st.devices === 1 && st.online === 1 ? st : null;
      });
      const rowText = (await row('car-1').innerText()).replace(/\s+/g, ' ');
      if (!rowText.includes('36 km/h')) throw new Error(`row shows no speed in km/h: "${rowText}"`);
      if (!rowText.includes('81%')) throw new Error(`row shows no battery: "${rowText}"`);
      if (await row('car-1').evaluate((el) => el.classList.contains('offline'))) throw new Error('row styled offline');
      const d = await waitFor('the marker drawn at its position', async () => {
        const v = await dev('car-1');
        return v && v.screen && Math.hypot(v.screen.x - v.expected.x, v.screen.y - v.expected.y) < 2 ? v : null;
      });
      firstScreen = d.screen;
      const colour = await markerColour(d.screen);
      if (colour !== 'online') throw new Error(`marker pixels at ${JSON.stringify(d.screen)} look ${colour}`);
      const counts = await page.locator('#counts').textContent();
      return `row "${rowText}", drawn at (${Math.round(d.screen.x)}, ${Math.round(d.screen.y)}), ${counts}, ${s.updates} update(s)`;
    });

    await check('it moves after a new fix (data, marker and details card)', async () => {
      await row('car-1').click();
      await page.locator('#details').waitFor({ state: 'visible', timeout: 3000 });
      const before = await page.locator('#details [data-field="position"]').textContent();
      // Stop following, so the map stays put and the marker has to move on screen.
      await page.locator('#follow-stop').click();
      const start = (await dev('car-1')).screen;
      car.send({ lat: 52.5203, lon: 13.4068, spd: 12, hdg: 45, ts: Date.now() });
      const moved = await waitFor('the new fix applied', async () => {
        const v = await dev('car-1');
        return v && v.lat === 52.5203 && v.lon === 13.4068 ? v : null;
      });
      const end = await waitFor('the marker at its new position', async () => {
        const v = await dev('car-1');
        return v.screen && Math.hypot(v.screen.x - v.expected.x, v.screen.y - v.expected.y) < 2 ? v.screen : null;
      });
      const dist = Math.hypot(end.x - start.x, end.y - start.y);
      if (dist < 10) throw new Error(`marker moved only ${dist.toFixed(1)} px`);
      if (moved.trail < 2) throw new Error(`trail has ${moved.trail} point(s)`);
      // Follow again: the card shows the new position.
      await row('car-1').click();
      const after = await waitFor('the details card to update', async () => {
        const t = await page.locator('#details [data-field="position"]').textContent();
        return t !== before ? t : null;
      });
      return `card "${before}" -> "${after}", marker moved ${dist.toFixed(0)} px`;
    });

    await check('following keeps the device centred, with highlight', async () => {
      const selected = await row('car-1').evaluate((el) => el.classList.contains('selected'));
      if (!selected) throw new Error('row not highlighted');
      if (await page.locator('#follow-badge').isHidden()) throw new Error('no "Following" badge');
      car.send({ lat: 52.5209, lon: 13.4075, spd: 12, hdg: 45, ts: Date.now() });
      await waitFor('the fix', async () => (await dev('car-1')).lat === 52.5209);
      const centred = await waitFor('the map to centre the device', async () => {
        const v = await dev('car-1');
        const size = await page.evaluate(() => window.beaconDebug.map.getSize());
        const off = v.screen ? Math.hypot(v.screen.x - size.x / 2, v.screen.y - size.y / 2) : Infinity;
        return off < 3 && Math.hypot(v.screen.x - v.expected.x, v.screen.y - v.expected.y) < 2 ? off : null;
      }, { ms: 5000 });
      return `${centred.toFixed(1)} px from the centre`;
    });

    await check('search filters the list', async () => {
      await page.fill('#search', 'zzz');
      await waitFor('no rows', async () => (await page.locator('#list .row:not([hidden])').count()) === 0, { ms: 3000 });
      const empty = await page.locator('#list-empty').textContent();
      await page.fill('#search', 'CAR-');
      await row('car-1').waitFor({ state: 'visible', timeout: 3000 });
      await page.fill('#search', '');
      return `"zzz" -> "${empty}"; "CAR-" -> car-1`;
    });

    await check('a second device and fit-all show both', async () => {
      const bike = await connectDevice(server.base, 'bike-7', GROUP);
      devices.push(bike);
      bike.send({ lat: 52.53, lon: 13.39, ts: Date.now() });
      await row('bike-7').waitFor({ timeout: 10000 });
      await page.locator('#fit-all').click();
      const size = await page.evaluate(() => window.beaconDebug.map.getSize());
      // Drawn where the map projects it (not mid-animation), and clear of the edges.
      const placed = (v) => {
        const p = v && v.screen;
        const settled = p && Math.hypot(p.x - v.expected.x, p.y - v.expected.y) < 2;
        return settled && p.x >= 40 && p.y >= 40 && p.x <= size.x - 40 && p.y <= size.y - 40;
      };
      const both = await waitFor('both well inside the map', async () => {
        const [a, b] = await page.evaluate(() => ['car-1', 'bike-7'].map((id) => window.beaconDebug.device(id)));
        return placed(a) && placed(b) ? [a.screen, b.screen] : null;
      }, { ms: 5000 });
      if (!(await page.locator('#follow-badge').isHidden())) throw new Error('fit-all did not stop following');
      return `car-1 at (${Math.round(both[0].x)}, ${Math.round(both[0].y)}), bike-7 at (${Math.round(both[1].x)}, ${Math.round(both[1].y)})`;
    });

    await check('the device goes offline when its socket closes', async () => {
      await car.close();
      await waitFor('row styled offline', () => row('car-1').evaluate((el) => el.classList.contains('offline')), { ms: 10000 });
      const v = await dev('car-1');
      if (v.online !== false) throw new Error('state still online');
      if (v.lat !== 52.5209) throw new Error('position lost on offline');
      const meta = (await row('car-1').innerText()).replace(/\s+/g, ' ');
      if (!meta.includes('offline')) throw new Error(`row text "${meta}"`);
      const colour = await waitFor('grey marker', async () => {
        const d = await dev('car-1');
        return d.screen && (await markerColour(d.screen)) === 'offline' ? 'offline' : null;
      }, { ms: 3000 });
      const st = await stats();
      return `row "${meta}", marker ${colour}, ${st.online} online of ${st.devices}`;
    });

    await check('screenshot saved to web/test/artifacts/map.png', async () => {
      const dir = join(webDir, 'test', 'artifacts');
      await mkdir(dir, { recursive: true });
      await page.locator('#search').blur();
      await page.screenshot({ path: join(dir, 'map.png') });
      // bike-7 stayed online for the picture; it leaves now.
      await devices.find((d) => d.id === 'bike-7').close();
      return join(dir, 'map.png');
    });

    await check('after a server restart the page reconnects and resyncs from snapshots', async () => {
      const port = server.port;
      await server.stop();
      await waitFor('indicator "reconnecting"', async () => (await stats()).state === 'reconnecting', { ms: 10000 });
      const label = await page.locator('#conn-text').textContent();
      server = await startServer([], { port });
      const van = await connectDevice(server.base, 'van-3', GROUP);
      devices.push(van);
      van.send({ lat: 52.51, lon: 13.41, ts: Date.now() });
      // The restarted server holds no positions but van-3's: the snapshot replaces the old state.
      await waitFor('live again with only van-3', async () => {
        const st = await stats();
        const ids = await page.evaluate(() => [...window.beaconDebug.state.devices.keys()]);
        return st.state === 'live' && ids.length === 1 && ids[0] === 'van-3';
      }, { ms: 30000 });
      await row('van-3').waitFor({ timeout: 5000 });
      if ((await row('car-1').count()) !== 0) throw new Error('car-1 still listed');
      await van.close();
      return `indicator showed "${label}"`;
    });

    await check('200 devices at 1 Hz for 5 s: all listed, fps measured', async () => {
      const N = 200;
      const fleet = await Promise.all(
        Array.from({ length: N }, (_, i) => connectDevice(server.base, `dev-${i + 1}`, GROUP)),
      );
      devices.push(...fleet);
      const pos = fleet.map((_, i) => ({
        lat: 52.45 + (i % 20) * 0.006,
        lon: 13.3 + Math.floor(i / 20) * 0.01,
        hdg: (i * 37) % 360,
      }));
      const tickOnce = () =>
        fleet.forEach((d, i) => {
          const p = pos[i];
          p.lat += Math.cos((p.hdg * Math.PI) / 180) * 0.0001;
          p.lon += Math.sin((p.hdg * Math.PI) / 180) * 0.00015;
          d.send({ lat: p.lat, lon: p.lon, hdg: p.hdg, spd: 10, batt: 50, ts: Date.now() });
        });
      tickOnce();
      await page.locator('#fit-all').click();
      const samples = [];
      for (let s = 0; s < 5; s += 1) {
        await sleep(1000);
        tickOnce();
        samples.push((await stats()).fps);
      }
      const st = await waitFor('all 200 listed', async () => {
        const v = await stats();
        return v.devices >= N ? v : null;
      }, { ms: 5000 });
      const counts = await page.locator('#counts').textContent();
      if (!counts.startsWith(`${N + 1} devices`) && !counts.startsWith(`${N} devices`)) throw new Error(`counts "${counts}"`);
      // The panel is virtual: a device far down the list is reachable by search.
      await page.fill('#search', 'dev-137');
      await row('dev-137').waitFor({ state: 'visible', timeout: 3000 });
      const visibleRows = await page.locator('#list .row:not([hidden])').count();
      await page.fill('#search', '');
      const domRows = await page.locator('#list .row').count();
      if (domRows > 60) throw new Error(`${domRows} row nodes in the DOM for ${st.devices} devices`);
      const fps = samples.slice(1);
      if (!fps.every((f) => f > 0)) throw new Error(`fps samples ${fps}`);
      const updates = st.updates;
      await Promise.all(fleet.map((d) => d.close()));
      return `fps ${fps.join(', ')} (median ${fps.sort((a, b) => a - b)[Math.floor(fps.length / 2)]}); ${counts}; ${updates} updates; ${domRows} row nodes; search "dev-137" -> ${visibleRows} row`;
    });

    await check('no errors in the page', async () => {
      // The console reports the refused socket while the server was down; that is expected.
      const real = pageErrors.filter((e) => !/WebSocket connection to .* failed/.test(e));
      if (real.length > 0) throw new Error(real.slice(0, 3).join(' | '));
      return pageErrors.length ? `${pageErrors.length} expected socket error(s) while the server was down` : '';
    });
  } catch (err) {
    results.push({ name: 'setup', ok: false });
    console.log(`FAIL - setup: ${err && err.stack ? err.stack : err}`);
    if (server) console.log(`server output:\n${server.output().slice(-3000)}`);
  } finally {
    await cleanup();
  }

  const passed = results.filter((r) => r.ok).length;
  const failed = results.length - passed;
  console.log(`E2E: ${passed} passed, ${failed} failed`);
  process.exit(failed === 0 ? 0 : 1);
}
