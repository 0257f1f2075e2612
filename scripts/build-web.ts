// Builds the dashboard page into web/dist (`npm run build:web`). The hub's `serve` and the demo
// build it on their own when it is missing or stale; this is for CI and for a fresh build.
import path from 'node:path';
import { buildWeb } from '../src/http/static.ts';

const result = buildWeb({ force: !process.argv.includes('--if-stale'), minify: process.argv.includes('--minify') });
console.log(result.built ? `built ${path.relative(process.cwd(), result.outDir) || '.'} (${result.reason})` : `not built: ${result.reason}`);
