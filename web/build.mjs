// Builds the page into dist/: app-HASH.js (the modules and Leaflet, bundled), app-HASH.css
// (Leaflet's stylesheet and ours), the images the stylesheets refer to, and index.html. Every
// URL is relative and every file sits at the top of dist/, so the server can serve dist/NAME at
// /NAME.
//
//   node build.mjs          minified build
//   node build.mjs --dev    readable build with source maps

import { build } from 'esbuild';
import { mkdir, readFile, readdir, rename, rm, stat, writeFile } from 'node:fs/promises';
import { basename, dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

const here = dirname(fileURLToPath(import.meta.url));
const dist = join(here, 'dist');
const dev = process.argv.includes('--dev');

await rm(dist, { recursive: true, force: true });
await mkdir(dist, { recursive: true });

let result;
try {
  result = await build({
    entryPoints: { app: join(here, 'src', 'main.js') },
    outdir: dist,
    bundle: true,
    format: 'esm',
    target: 'es2020',
    minify: !dev,
    sourcemap: dev ? 'linked' : false,
    legalComments: 'linked',
    loader: { '.png': 'file', '.svg': 'file' },
    entryNames: '[name]-[hash]',
    assetNames: '[name]-[hash]',
    metafile: true,
    logLevel: 'silent',
  });
} catch (err) {
  // esbuild's messages name the file, line and problem; print those, not a stack trace.
  for (const e of err.errors || [{ text: String(err) }]) {
    const at = e.location ? `${e.location.file}:${e.location.line}:${e.location.column}: ` : '';
    console.error(`error: ${at}${e.text}`);
  }
  console.error('build failed');
  process.exit(1);
}
for (const w of result.warnings) console.error(`warning: ${w.text}`);

// The bundles carry a hash of their content in their names, so a browser may cache them for
// as long as it likes; index.html is rewritten to point at them.
const entry = Object.entries(result.metafile.outputs).find(([, o]) => o.entryPoint && o.entryPoint.endsWith('main.js'));
if (!entry || !entry[1].cssBundle) {
  console.error('build failed: no JavaScript or CSS bundle in the output');
  process.exit(1);
}
const jsName = basename(entry[0]);
const cssName = basename(entry[1].cssBundle);
const html = await readFile(join(here, 'index.html'), 'utf8');
if (!html.includes('"./app.js"') || !html.includes('"./app.css"')) {
  console.error('build failed: index.html must refer to "./app.js" and "./app.css"');
  process.exit(1);
}
// index.html last: its presence means the build is complete (build.rs checks for it).
await writeFile(join(dist, 'index.html.tmp'), html.replace('"./app.js"', `"./${jsName}"`).replace('"./app.css"', `"./${cssName}"`));
await rename(join(dist, 'index.html.tmp'), join(dist, 'index.html'));

const files = await readdir(dist);
let total = 0;
for (const f of files.sort()) {
  const { size } = await stat(join(dist, f));
  total += size;
  console.log(`  dist/${f}  ${(size / 1024).toFixed(1)} KiB`);
}
console.log(`built ${files.length} files, ${(total / 1024).toFixed(1)} KiB${dev ? ' (dev)' : ''}`);
