// Builds the dashboard page into web/dist (`npm run build:web`): minified, no source map, with
// gzip and brotli copies; `-- --dev` for a readable build with an inline source map, `--if-stale`
// to build only when needed. The hub's `serve` and the demo build it on their own when it is
// missing or stale; this is for CI, the image and a fresh build.
import path from 'node:path';
import { buildWeb } from '../src/http/static.ts';

const result = buildWeb({
  force: !process.argv.includes('--if-stale'),
  mode: process.argv.includes('--dev') ? 'development' : 'production',
});
console.log(
  result.built
    ? `built ${path.relative(process.cwd(), result.outDir) || '.'} (${result.reason})`
    : `not built: ${result.reason}`,
);
