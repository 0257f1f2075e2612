#!/usr/bin/env node
// Image build step: `node scripts/prune-uws.mjs [node_modules]`. The uWebSockets.js packages ship
// a native binary for every platform and Node ABI (about 100 MB each); an image needs the one
// for its own platform, arch and Node. Keeps that one, deletes every other `.node` file in them,
// and removes a package left without a binary the loader (src/hub/uws.ts) could use: its JS
// stand-in would only be refused. Fails when no package keeps a binary.
import { existsSync, readdirSync, rmSync } from 'node:fs';
import path from 'node:path';

const modules = path.resolve(process.argv[2] ?? 'node_modules');
const keep = `uws_${process.platform}_${process.arch}_${process.versions.modules}.node`;
// Where each package's loader looks for the binary, relative to the package directory.
const PACKAGES = { 'uWebSockets.js': 'binaries', '@btc-vision/uwebsockets.js': '.' };

const walk = (dir) =>
  readdirSync(dir, { withFileTypes: true }).flatMap((e) =>
    e.isDirectory() ? walk(path.join(dir, e.name)) : [path.join(dir, e.name)],
  );

let kept = 0;
for (const [name, binDir] of Object.entries(PACKAGES)) {
  const dir = path.join(modules, name);
  if (!existsSync(dir)) continue;
  const wanted = path.join(dir, binDir, keep);
  if (!existsSync(wanted)) {
    rmSync(dir, { recursive: true, force: true });
    console.log(`removed ${name}: no ${keep}`);
    continue;
  }
  for (const file of walk(dir)) if (file.endsWith('.node') && file !== wanted) rmSync(file);
  kept++;
  console.log(`${name}: kept ${path.relative(modules, wanted)} only`);
}
if (kept === 0) {
  console.error(`no uWebSockets.js package has ${keep}: the hub cannot run on Node ${process.version} here`);
  process.exit(1);
}
