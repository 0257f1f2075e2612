import { copyFileSync, existsSync, mkdirSync, readFileSync, readdirSync, renameSync, rmSync, statSync } from 'node:fs';
import { createRequire } from 'node:module';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import type { StaticFiles } from '../hub/server.ts';

const TYPES: Record<string, string> = { '.html': 'text/html; charset=utf-8', '.js': 'text/javascript; charset=utf-8', '.css': 'text/css; charset=utf-8' };

const ROOT = fileURLToPath(new URL('../../', import.meta.url));
/** The page's sources (web/) and the SDK it bundles (client/). */
const WEB_DIR = path.join(ROOT, 'web');
const CLIENT_DIR = path.join(ROOT, 'client');
/** Where the built page is served from. */
export const WEB_DIST = path.join(WEB_DIR, 'dist');
/** What a build writes; index.html is copied last, so its presence means a complete build. */
const OUTPUTS = ['app.js', 'app.css', 'index.html'];

export type WebBuildResult = { built: boolean; reason: string; outDir: string };

/**
 * Builds the dashboard page: bundles web/app.ts (and the client SDK it imports) into
 * web/dist/app.js with esbuild and copies index.html and app.css next to it. Without `force`
 * it only builds when web/dist is missing or older than a source file, so `serve` and the demo
 * can call it at every start. Synchronous (esbuild's buildSync) because the static file
 * handler is; a build takes well under a second. The files are written to a temporary
 * directory and renamed into place, so a reader never sees half a build.
 */
export function buildWeb(opts: { force?: boolean; webDir?: string; outDir?: string; minify?: boolean } = {}): WebBuildResult {
  const webDir = opts.webDir ?? WEB_DIR;
  const outDir = opts.outDir ?? path.join(webDir, 'dist');
  const entry = path.join(webDir, 'app.ts');
  if (!existsSync(entry)) return { built: false, reason: `no sources (${entry} is missing)`, outDir };
  if (!opts.force) {
    const stale = staleness(webDir, outDir);
    if (stale === undefined) return { built: false, reason: 'up to date', outDir };
  }
  // esbuild comes with tsx (a runtime dependency); loaded only when a build is needed.
  const esbuild = createRequire(import.meta.url)('esbuild') as typeof import('esbuild');
  const tmp = `${outDir}.tmp-${process.pid}-${Date.now()}`;
  mkdirSync(tmp, { recursive: true });
  try {
    esbuild.buildSync({
      entryPoints: [entry],
      bundle: true,
      format: 'esm',
      platform: 'browser',
      target: ['es2022'],
      outfile: path.join(tmp, 'app.js'),
      sourcemap: 'inline',
      minify: opts.minify ?? false,
      legalComments: 'none',
      logLevel: 'silent',
    });
    copyFileSync(path.join(webDir, 'app.css'), path.join(tmp, 'app.css'));
    copyFileSync(path.join(webDir, 'index.html'), path.join(tmp, 'index.html'));
    mkdirSync(outDir, { recursive: true });
    for (const name of OUTPUTS) renameSync(path.join(tmp, name), path.join(outDir, name));
  } finally {
    rmSync(tmp, { recursive: true, force: true });
  }
  return { built: true, reason: opts.force ? 'forced' : 'missing or older than its sources', outDir };
}

/** undefined when every output exists and is newer than every source; else why not. */
function staleness(webDir: string, outDir: string): string | undefined {
  let oldestOutput = Infinity;
  for (const name of OUTPUTS) {
    const file = path.join(outDir, name);
    if (!existsSync(file)) return `${file} is missing`;
    oldestOutput = Math.min(oldestOutput, statSync(file).mtimeMs);
  }
  for (const file of [...sourcesIn(webDir), ...sourcesIn(CLIENT_DIR)]) {
    if (statSync(file).mtimeMs > oldestOutput) return `${file} changed`;
  }
  return undefined;
}

function sourcesIn(dir: string): string[] {
  if (!existsSync(dir)) return [];
  const out: string[] = [];
  for (const entry of readdirSync(dir, { withFileTypes: true })) {
    if (entry.isDirectory()) {
      if (entry.name === 'dist' || entry.name === 'node_modules' || entry.name.startsWith('.')) continue;
      out.push(...sourcesIn(path.join(dir, entry.name)));
    } else if (/\.(ts|html|css)$/.test(entry.name)) {
      out.push(path.join(dir, entry.name));
    }
  }
  return out;
}

/**
 * Serves the dashboard page built into web/dist (read once per request path, then kept).
 * For the default directory the page is built first when it is missing or stale (a clone
 * that never ran `npm run build:web`); a failed build leaves the routes answering 404.
 */
export function staticFilesFrom(dir = WEB_DIST, opts: { build?: boolean; log?: (msg: string) => void } = {}): StaticFiles {
  const log = opts.log ?? ((msg: string) => process.stderr.write(`${msg}\n`));
  if (opts.build ?? path.resolve(dir) === WEB_DIST) {
    try {
      const r = buildWeb();
      if (r.built) log(`dashboard page built into ${r.outDir} (${r.reason})`);
    } catch (err) {
      // A read-only install (the container image) serves whatever is there, or 404.
      log(`dashboard page not built: ${(err as Error).message}`);
    }
  }
  const base = dir.endsWith(path.sep) ? dir : dir + path.sep;
  const cache = new Map<string, { body: Buffer; contentType: string }>();
  return (urlPath) => {
    const name = urlPath === '/' ? 'index.html' : urlPath.slice(1);
    const hit = cache.get(name);
    if (hit) return hit;
    const file = base + name;
    if (!/^[a-z0-9._-]+$/i.test(name) || !existsSync(file)) return undefined;
    const ext = name.slice(name.lastIndexOf('.'));
    const entry = { body: readFileSync(file), contentType: TYPES[ext] ?? 'application/octet-stream' };
    cache.set(name, entry);
    return entry;
  };
}
