// Takes a screenshot of the page against a real server, for looking at it without a display.
//
//   node tools/screenshot.mjs [--demo N] [--devices N] [--query '?groups=demo&tiles=none']
//                             [--wait MS] [--follow ID] [--out FILE] [--width W --height H]
//                             [--scale DEVICE_PIXEL_RATIO]
//
// --devices N connects N simulated devices of its own (group "shot") around Berlin and moves
// them; --demo N starts the server's built-in simulator instead.

import { mkdir } from 'node:fs/promises';
import { dirname, resolve } from 'node:path';
import { connectDevice, launchBrowser, sleep, startServer, waitFor } from './harness.mjs';

const opts = { demo: 0, devices: 0, query: '', wait: 3000, out: 'test/artifacts/shot.png', follow: '', width: 1360, height: 820, scale: 1 };
const argv = process.argv.slice(2);
for (let i = 0; i < argv.length; i += 1) {
  const key = argv[i].replace(/^--/, '');
  if (!(key in opts)) throw new Error(`unknown option ${argv[i]}`);
  const value = argv[(i += 1)];
  opts[key] = typeof opts[key] === 'number' ? Number(value) : value;
}
if (!opts.query) opts.query = opts.demo ? '?groups=demo&tiles=none' : '?groups=shot&tiles=none';

const server = await startServer(opts.demo ? ['--demo', String(opts.demo)] : []);
const browser = await launchBrowser({ width: opts.width, height: opts.height, scale: opts.scale });
const devices = [];
let mover = null;
try {
  const fixes = [];
  for (let i = 0; i < opts.devices; i += 1) {
    const d = await connectDevice(server.base, `van-${i + 1}`, 'shot');
    devices.push(d);
    fixes.push({
      lat: 52.5 + Math.sin(i * 2.1) * 0.03,
      lon: 13.4 + Math.cos(i * 1.7) * 0.05,
      hdg: (i * 47) % 360,
      spd: 4 + (i % 9) * 1.5,
      batt: (i * 37) % 100,
    });
  }
  const step = () => {
    devices.forEach((d, i) => {
      const f = fixes[i];
      f.hdg = (f.hdg + 7) % 360;
      f.lat += Math.cos((f.hdg * Math.PI) / 180) * 0.0004;
      f.lon += Math.sin((f.hdg * Math.PI) / 180) * 0.0006;
      d.send({ lat: f.lat, lon: f.lon, hdg: f.hdg, spd: f.spd, batt: f.batt, ts: Date.now() });
    });
  };
  step();
  mover = setInterval(step, 1000);
  // Two devices go offline, so the picture shows both styles.
  setTimeout(() => devices.slice(-2).forEach((d) => d.close()), Math.max(0, opts.wait - 1500));

  const page = browser.page;
  page.on('console', (m) => {
    if (m.type() === 'error') console.error(`page: ${m.text()}`);
  });
  await page.goto(`${server.base}/${opts.query}`);
  await waitFor('the page to go live', () => page.evaluate(() => window.beaconStats && window.beaconStats.state === 'live'));
  if (opts.follow) {
    await sleep(1500);
    await page.evaluate((id) => window.beaconDebug.follow(id), opts.follow);
  }
  await sleep(opts.wait);
  const out = resolve(process.cwd(), opts.out);
  await mkdir(dirname(out), { recursive: true });
  await page.screenshot({ path: out });
  console.log(`saved ${out}`);
  console.log(JSON.stringify(await page.evaluate(() => window.beaconStats)));
} finally {
  clearInterval(mover);
  await Promise.all(devices.map((d) => d.close()));
  await browser.close();
  await server.stop();
}
