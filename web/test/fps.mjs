// Measures how smoothly the page runs with many moving devices (not part of the test suite).
//
//   node web/test/fps.mjs [--devices 5000] [--seconds 20] [--width 1360 --height 820]
//
// Starts `beacon serve --demo N` (N simulated devices in group `demo`, ~1 Hz each), opens the
// page with `?groups=demo&tiles=none` in headless Chromium, waits for the devices to arrive,
// then samples `window.beaconStats` once a second and prints the median frame rate, along with
// how often the device layer repainted and what a repaint cost.

if (process.env.NODE_TEST_CONTEXT) {
  const { test } = await import('node:test');
  test('fps measurement (run: node web/test/fps.mjs)', { skip: 'a measurement, not a test' }, () => {});
} else {
  await main();
}

async function main() {
  const { launchBrowser, sleep, startServer, waitFor } = await import('../tools/harness.mjs');
  const opts = { devices: 5000, seconds: 20, width: 1360, height: 820 };
  const argv = process.argv.slice(2);
  for (let i = 0; i < argv.length; i += 1) {
    const key = argv[i].replace(/^--/, '');
    if (!(key in opts)) {
      console.error(`unknown option ${argv[i]}; options: ${Object.keys(opts).map((k) => `--${k}`).join(' ')}`);
      process.exit(2);
    }
    opts[key] = Number(argv[(i += 1)]);
  }

  const median = (xs) => {
    const s = [...xs].sort((a, b) => a - b);
    return s.length ? s[Math.floor(s.length / 2)] : NaN;
  };

  let server = null;
  let browser = null;
  let code = 0;
  try {
    server = await startServer(['--demo', String(opts.devices)]);
    browser = await launchBrowser({ width: opts.width, height: opts.height });
    const page = browser.page;
    await page.goto(`${server.base}/?groups=demo&tiles=none`);
    const stats = () => page.evaluate(() => ({ ...window.beaconStats }));
    await waitFor('the page to go live', async () => (await stats()).state === 'live', { ms: 15000 });
    const loaded = await waitFor(
      `${opts.devices} devices on the page`,
      async () => {
        const s = await stats();
        return s.devices >= opts.devices ? s : null;
      },
      { ms: 30000, every: 250 },
    ).catch(async (err) => {
      const s = await stats();
      throw new Error(`${err.message}; the page has ${s.devices} (does this server support --demo?)`);
    });
    console.log(`${loaded.devices} devices on the page; warming up`);
    await sleep(3000);

    const samples = [];
    let prev = await stats();
    for (let t = 0; t < opts.seconds; t += 1) {
      await sleep(1000);
      const s = await stats();
      samples.push({ fps: s.fps, paints: s.paints, paintMs: s.paintMs, updates: s.updates - prev.updates, visible: s.visible, rtt: s.rtt });
      prev = s;
    }
    const fps = samples.map((s) => s.fps);
    console.log(`fps per second: ${fps.join(' ')}`);
    console.log(
      `devices ${prev.devices} (visible ${median(samples.map((s) => s.visible))}), ` +
        `updates/s ${median(samples.map((s) => s.updates))}, ` +
        `repaints/s ${median(samples.map((s) => s.paints))}, ` +
        `repaint ${median(samples.map((s) => s.paintMs))} ms, ` +
        `RTT ${median(samples.map((s) => s.rtt))} ms`,
    );
    console.log(`median fps ${median(fps)} (min ${Math.min(...fps)}, max ${Math.max(...fps)}) over ${opts.seconds} s with ${opts.devices} devices`);
  } catch (err) {
    console.error(`fps: ${err.message}`);
    code = 1;
  } finally {
    if (browser) await browser.close();
    if (server) await server.stop();
  }
  process.exit(code);
}
