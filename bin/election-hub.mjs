#!/usr/bin/env node
// The `election-hub` command. In a checkout (src/ and the dev dependency tsx present) it runs the
// TypeScript sources through tsx, so development needs no build step; otherwise (the container
// image, a production install) it runs the plain JavaScript that `npm run build` wrote to dist/,
// and nothing is transpiled at start.
import { existsSync } from 'node:fs';
import { createRequire } from 'node:module';
import { nodeVersionProblem } from './node-support.mjs';

const problem = nodeVersionProblem(process.versions.node);
if (problem) {
  console.error(problem);
  process.exit(2);
}

const source = new URL('../src/', import.meta.url);
const built = new URL('../dist/', import.meta.url);
const hasTsx = () => {
  try {
    createRequire(import.meta.url).resolve('tsx/esm/api');
    return true;
  } catch {
    return false;
  }
};

let root;
if (existsSync(new URL('cli.ts', source)) && hasTsx()) {
  const { register } = await import('tsx/esm/api');
  register();
  root = { dir: source, ext: '.ts' };
} else if (existsSync(new URL('cli.js', built))) {
  root = { dir: built, ext: '.js' };
} else {
  console.error('election-hub: no dist/cli.js: run `npm run build` (or `npm install` to run the sources with tsx)');
  process.exit(2);
}

const command = process.argv[2];
if (command === 'serve' || command === 'demo') {
  // Load the native uWebSockets.js build before anything listens; without one, one line and exit 2.
  try {
    await import(new URL(`hub/uws${root.ext}`, root.dir).href);
  } catch (err) {
    if (err instanceof Error && err.name === 'UwsUnavailableError') {
      console.error(err.message);
      process.exit(2);
    }
    throw err;
  }
}

const { main } = await import(new URL(`cli${root.ext}`, root.dir).href);
process.exitCode = await main(process.argv.slice(2));
